//! A small, total SQL lexer for PostgreSQL text: it classifies byte ranges into tokens and
//! never fails. Literals (strings, numbers, bit strings, dollar quotes) are recognised so the
//! sanitizer can drop them; an unterminated literal swallows the rest of the input.

/// What a token is; the sanitizer and the summarizer decide what to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Identifier or keyword (unquoted).
    Word,
    /// `"quoted identifier"` (also `U&"..."`).
    QuotedIdent,
    /// String, bit string, dollar-quoted string: always a literal.
    Str,
    /// Numeric literal.
    Number,
    /// `$1` placeholder.
    Param,
    /// Operator run such as `=`, `<>`, `::` is Punct, `-`.
    Op,
    /// One of `( ) , ; [ ] .` or `:` / `::`.
    Punct,
    /// A literal or quoted identifier that never ends: everything to the end of input.
    Unterminated,
    /// Any other single byte.
    Other,
}

/// One token: a byte range of the input and whether whitespace or a comment preceded it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tok {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
    pub space_before: bool,
}

/// Iterator over the tokens of `s`.
pub(crate) struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Self { s, pos: 0 }
    }

    fn at(&self, i: usize) -> u8 {
        self.s.get(i).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments; true if anything was skipped.
    fn skip_trivia(&mut self) -> bool {
        let start = self.pos;
        loop {
            let c = self.at(self.pos);
            if self.pos >= self.s.len() {
                break;
            }
            if c.is_ascii_whitespace() {
                self.pos += 1;
            } else if c == b'-' && self.at(self.pos + 1) == b'-' {
                while self.pos < self.s.len() && self.at(self.pos) != b'\n' {
                    self.pos += 1;
                }
            } else if c == b'/' && self.at(self.pos + 1) == b'*' {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                while self.pos < self.s.len() {
                    if self.at(self.pos) == b'/' && self.at(self.pos + 1) == b'*' {
                        depth += 1;
                        self.pos += 2;
                    } else if self.at(self.pos) == b'*' && self.at(self.pos + 1) == b'/' {
                        depth = depth.saturating_sub(1);
                        self.pos += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.pos += 1;
                    }
                }
                self.pos = self.pos.min(self.s.len());
            } else {
                break;
            }
        }
        self.pos > start
    }

    /// Scans a quoted run starting at the opening quote `q`; doubled quotes escape, and with
    /// `backslash` a backslash escapes the next byte. Returns false when unterminated.
    fn quoted(&mut self, q: u8, backslash: bool) -> bool {
        self.pos += 1;
        while self.pos < self.s.len() {
            let c = self.at(self.pos);
            if backslash && c == b'\\' {
                self.pos += 2;
            } else if c == q {
                if self.at(self.pos + 1) == q && self.pos + 1 < self.s.len() {
                    self.pos += 2;
                } else {
                    self.pos += 1;
                    return true;
                }
            } else {
                self.pos += 1;
            }
        }
        self.pos = self.s.len();
        false
    }

    /// At a `$`: a dollar-quote opening tag ends at this index (exclusive), if it is one.
    fn dollar_tag_end(&self) -> Option<usize> {
        let mut i = self.pos + 1;
        if self.at(i) == b'$' {
            return Some(i + 1);
        }
        if !is_ident_start(self.at(i)) || i >= self.s.len() {
            return None;
        }
        while i < self.s.len() && (is_ident_cont(self.at(i)) && self.at(i) != b'$') {
            i += 1;
        }
        if self.at(i) == b'$' && i < self.s.len() {
            Some(i + 1)
        } else {
            None
        }
    }

    fn number(&mut self) {
        let c = self.at(self.pos);
        let n = self.at(self.pos + 1);
        if c == b'0' && matches!(n, b'x' | b'X' | b'o' | b'O' | b'b' | b'B') {
            self.pos += 2;
            while is_ident_cont(self.at(self.pos)) && self.pos < self.s.len() {
                self.pos += 1;
            }
            return;
        }
        while self.pos < self.s.len()
            && (self.at(self.pos).is_ascii_digit() || self.at(self.pos) == b'_')
        {
            self.pos += 1;
        }
        if self.at(self.pos) == b'.' && self.at(self.pos + 1) != b'.' {
            self.pos += 1;
            while self.pos < self.s.len()
                && (self.at(self.pos).is_ascii_digit() || self.at(self.pos) == b'_')
            {
                self.pos += 1;
            }
        }
        if matches!(self.at(self.pos), b'e' | b'E') {
            let mut i = self.pos + 1;
            if matches!(self.at(i), b'+' | b'-') {
                i += 1;
            }
            if self.at(i).is_ascii_digit() && i < self.s.len() {
                self.pos = i;
                while self.pos < self.s.len() && self.at(self.pos).is_ascii_digit() {
                    self.pos += 1;
                }
            }
        }
        // Trailing junk such as `123abc` belongs to the literal.
        while self.pos < self.s.len() && is_ident_cont(self.at(self.pos)) {
            self.pos += 1;
        }
    }

    fn op(&mut self) {
        let start = self.pos;
        while self.pos < self.s.len() && is_op_char(self.at(self.pos)) {
            if self.pos > start
                && ((self.at(self.pos) == b'-' && self.at(self.pos + 1) == b'-')
                    || (self.at(self.pos) == b'/' && self.at(self.pos + 1) == b'*'))
            {
                break;
            }
            self.pos += 1;
        }
        // PostgreSQL: a multi-character operator cannot end in + or - unless it also
        // contains one of ~ ! @ # % ^ & | ` ?, so `=-1` is `=` then `-1`.
        let run = self.s.get(start..self.pos).unwrap_or_default();
        if run.len() > 1
            && !run.iter().any(|c| {
                matches!(
                    c,
                    b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
                )
            })
        {
            while self.pos > start + 1 && matches!(self.at(self.pos - 1), b'+' | b'-') {
                self.pos -= 1;
            }
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let space_before = self.skip_trivia();
        if self.pos >= self.s.len() {
            return None;
        }
        let start = self.pos;
        let c = self.at(start);
        let kind = match c {
            b'\'' => {
                if self.quoted(b'\'', false) {
                    Kind::Str
                } else {
                    Kind::Unterminated
                }
            }
            b'"' => {
                if self.quoted(b'"', false) {
                    Kind::QuotedIdent
                } else {
                    Kind::Unterminated
                }
            }
            b'$' => {
                if self.at(start + 1).is_ascii_digit() && start + 1 < self.s.len() {
                    self.pos += 1;
                    while self.pos < self.s.len() && self.at(self.pos).is_ascii_digit() {
                        self.pos += 1;
                    }
                    Kind::Param
                } else if let Some(body) = self.dollar_tag_end() {
                    let tag = self.s.get(start..body).unwrap_or_default();
                    let rest = self.s.get(body..).unwrap_or_default();
                    match rest.windows(tag.len()).position(|w| w == tag) {
                        Some(i) => {
                            self.pos = body + i + tag.len();
                            Kind::Str
                        }
                        None => {
                            self.pos = self.s.len();
                            Kind::Unterminated
                        }
                    }
                } else {
                    self.pos += 1;
                    Kind::Other
                }
            }
            b'0'..=b'9' => {
                self.number();
                Kind::Number
            }
            b'.' if self.at(start + 1).is_ascii_digit() && start + 1 < self.s.len() => {
                self.number();
                Kind::Number
            }
            b'(' | b')' | b',' | b';' | b'[' | b']' | b'.' => {
                self.pos += 1;
                Kind::Punct
            }
            b':' => {
                self.pos += if self.at(start + 1) == b':' { 2 } else { 1 };
                Kind::Punct
            }
            c if is_ident_start(c) => {
                while self.pos < self.s.len() && is_ident_cont(self.at(self.pos)) {
                    self.pos += 1;
                }
                let word = self.s.get(start..self.pos).unwrap_or_default();
                let next = self.at(self.pos);
                let has_next = self.pos < self.s.len();
                if word.len() == 1 && next == b'\'' && has_next {
                    match word.first().copied().unwrap_or(0).to_ascii_lowercase() {
                        b'e' => {
                            if self.quoted(b'\'', true) {
                                Kind::Str
                            } else {
                                Kind::Unterminated
                            }
                        }
                        b'b' | b'x' | b'n' => {
                            if self.quoted(b'\'', false) {
                                Kind::Str
                            } else {
                                Kind::Unterminated
                            }
                        }
                        _ => Kind::Word,
                    }
                } else if word.eq_ignore_ascii_case(b"u")
                    && next == b'&'
                    && matches!(self.at(self.pos + 1), b'\'' | b'"')
                    && self.pos + 1 < self.s.len()
                {
                    let q = self.at(self.pos + 1);
                    self.pos += 1;
                    match (self.quoted(q, false), q) {
                        (true, b'\'') => Kind::Str,
                        (true, _) => Kind::QuotedIdent,
                        (false, _) => Kind::Unterminated,
                    }
                } else {
                    Kind::Word
                }
            }
            c if is_op_char(c) => {
                self.op();
                Kind::Op
            }
            _ => {
                self.pos += 1;
                Kind::Other
            }
        };
        let end = self.pos.min(self.s.len()).max(start + 1).min(self.s.len());
        self.pos = end;
        Some(Tok {
            kind,
            start,
            end,
            space_before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<(Kind, String)> {
        Lexer::new(s.as_bytes())
            .map(|t| (t.kind, s.get(t.start..t.end).unwrap_or("").to_string()))
            .collect()
    }

    #[test]
    fn splits_trailing_minus_off_operators() {
        let k = kinds("a=-1");
        assert_eq!(k.len(), 4);
        assert_eq!(k[1], (Kind::Op, "=".into()));
        assert_eq!(k[2], (Kind::Op, "-".into()));
        assert_eq!(k[3], (Kind::Number, "1".into()));
    }

    #[test]
    fn dollar_quotes_and_params() {
        let k = kinds("$1 $$a$$ $x$ b $x$ $");
        assert_eq!(k[0].0, Kind::Param);
        assert_eq!(k[1].0, Kind::Str);
        assert_eq!(k[2], (Kind::Str, "$x$ b $x$".into()));
        assert_eq!(k[3].0, Kind::Other);
    }

    #[test]
    fn never_loops_on_odd_bytes() {
        for s in [
            "\\", "'", "\"", "$", "$a", "e'", "u&", "/*", "--", "0x", "1e", ".", "::",
        ] {
            let n = Lexer::new(s.as_bytes()).count();
            assert!(n <= s.len(), "{s}");
        }
    }
}
