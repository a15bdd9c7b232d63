//! Privacy defaults for HTTP: values of sensitive query keys become `REDACTED`, and
//! credentials in a URL's userinfo become `REDACTED:REDACTED`. Also the redaction of a
//! process's arguments for the opt-in `process.command_line` / `process.command_args`.

const SENSITIVE_KEYS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "sig",
    "signature",
    "awsaccesskeyid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "auth",
    "authorization",
    "key",
];

/// Room for a decoded query key: longer than every [`SENSITIVE_KEYS`] entry (tested), so a
/// key that does not fit is not sensitive.
const MAX_SENSITIVE_KEY_LEN: usize = 32;

/// Whether a query key names a secret, compared after percent-decoding (servers decode
/// `pass%77ord` to `password` before the application sees it) and in any case. Runs for
/// every key of every query: decoded into a stack buffer, never allocated.
fn is_sensitive(key: &str) -> bool {
    let mut buf = [0u8; MAX_SENSITIVE_KEY_LEN];
    let mut len = 0;
    for byte in percent_encoding::percent_decode(key.as_bytes()) {
        let Some(slot) = buf.get_mut(len) else {
            return false;
        };
        *slot = byte;
        len += 1;
    }
    let decoded = buf.get(..len).unwrap_or_default();
    SENSITIVE_KEYS
        .iter()
        .any(|k| decoded.eq_ignore_ascii_case(k.as_bytes()))
}

/// Redacts the values of sensitive keys in a query string (without the leading `?`).
pub fn query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if is_sensitive(k) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// Builds `url.full` for a client request: scheme://[REDACTED:REDACTED@]host[:port]/path?query
/// with sensitive query values redacted. `target` may be origin-form or absolute-form.
pub fn url_full(scheme: &str, host: &str, target: &str) -> String {
    let (authority, path_and_query) = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let scheme_len = target.len() - rest.len();
        let scheme_part = &target[..scheme_len - 3];
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..split];
        let authority = match authority.rsplit_once('@') {
            Some((_, host)) => format!("REDACTED:REDACTED@{host}"),
            None => authority.to_owned(),
        };
        return format!(
            "{scheme_part}://{authority}{}",
            redact_path_query(&rest[split..])
        );
    } else {
        (host, target)
    };
    format!(
        "{scheme}://{authority}{}",
        redact_path_query(path_and_query)
    )
}

fn redact_path_query(pq: &str) -> String {
    match pq.split_once('?') {
        Some((path, q)) => format!("{path}?{}", query(q)),
        None => pq.to_owned(),
    }
}

/// Words that make a flag, a `KEY=value` argument or a keyword in SQL text name a secret.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "pass",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "privatekey",
    "private_key",
    "private-key",
    "credential",
    "auth",
    "cookie",
    "signature",
    "key",
];

/// Whether a flag or variable name (`db-password`, `API_KEY`, `token`) names a secret.
fn secret_name(name: &str) -> bool {
    let name = name.trim_start_matches('-').to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    // Split into words so that `keyboard` or `passenger` are not secrets but `db-pass` is.
    let words: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let joined: String = words.concat();
    SECRET_WORDS.iter().any(|s| {
        let s_plain: String = s.chars().filter(char::is_ascii_alphanumeric).collect();
        words.iter().any(|w| *w == s_plain)
            || joined.ends_with(&s_plain) && s_plain.len() >= 4
            || joined.starts_with(&s_plain) && s_plain.len() >= 5
    })
}

/// Short flags whose next argument (or attached value) is a password in common tools
/// (`mysql -pSECRET`, `sshpass -p x`, `redis-cli -a x`). Redacting a port by mistake is harmless.
const SECRET_SHORT_FLAGS: &[&str] = &["-p", "-a"];

/// Redacts secret-looking arguments: the value after a secret flag (`--password x`, `-p x`),
/// in `--db-password=x` and `TOKEN=x`, quoted literals after SQL `PASSWORD`/`IDENTIFIED BY`,
/// header values such as `Authorization: Bearer ...`, URL userinfo and sensitive query
/// values, and arguments that are high-entropy tokens themselves.
pub fn argv(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut redact_next = false;
    for (i, arg) in args.iter().enumerate() {
        if redact_next && !arg.starts_with("--") {
            redact_next = false;
            out.push(REDACTED.to_owned());
            continue;
        }
        redact_next = false;
        if i > 0 {
            if let Some(flag) = arg.strip_prefix('-') {
                if let Some((name, _)) = flag.split_once('=') {
                    if secret_name(name) {
                        out.push(format!("-{name}={REDACTED}"));
                        continue;
                    }
                } else if secret_name(flag) || SECRET_SHORT_FLAGS.contains(&arg.as_str()) {
                    redact_next = true;
                    out.push(arg.clone());
                    continue;
                } else if !arg.starts_with("--")
                    && arg.len() > 2
                    && SECRET_SHORT_FLAGS.iter().any(|f| arg.starts_with(f))
                {
                    // `mysql -pSECRET`: the value attached to the short flag.
                    out.push(format!("{}{REDACTED}", &arg[..2]));
                    continue;
                }
            } else if let Some((name, _)) = arg.split_once('=')
                && !name.contains(char::is_whitespace)
                && secret_name(name)
            {
                out.push(format!("{name}={REDACTED}"));
                continue;
            }
            if crate::trace::route::is_token(arg) {
                out.push(REDACTED.to_owned());
                continue;
            }
        }
        out.push(text(arg));
    }
    out
}

const REDACTED: &str = "REDACTED";

/// Redacts secrets inside free text (an argument such as `psql -c "ALTER ROLE ... PASSWORD 'x'"`
/// or a URL): URL userinfo, sensitive query values, and what follows a secret keyword.
pub fn text(s: &str) -> String {
    let s = userinfo(s);
    let lower = s.to_ascii_lowercase();
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let Some((kw_end, rest_of_text)) = keyword_at(&lower, i) else {
            let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + ch_len]);
            i += ch_len;
            continue;
        };
        out.push_str(&s[i..kw_end]);
        let mut j = kw_end;
        // The rest of a compound name (`password_hash`, `token-file`).
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'-'))
        {
            j += 1;
        }
        let name_end = j;
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t' | b'=' | b':' | b'"') {
            j += 1;
        }
        if j == name_end || j >= bytes.len() {
            // A bare word (`--password` alone, "no password here") has no value to hide.
            out.push_str(&s[kw_end..j]);
            i = j;
            continue;
        }
        out.push_str(&s[kw_end..j]);
        let end = if rest_of_text {
            bytes.len()
        } else if matches!(bytes[j], b'\'' | b'"') {
            let quote = bytes[j];
            out.push(char::from(quote));
            j += 1;
            let close = s[j..]
                .find(char::from(quote))
                .map_or(bytes.len(), |k| j + k);
            out.push_str(REDACTED);
            i = close;
            continue;
        } else {
            s[j..]
                .find([' ', '\t', '&', ',', ';', '"', '\'', ')'])
                .map_or(bytes.len(), |k| j + k)
        };
        out.push_str(REDACTED);
        i = end;
    }
    out
}

/// A secret keyword starting at byte `i` of `lower` (at a word start): its end, and whether
/// everything after it is the secret (header values like `Authorization: Bearer x`).
fn keyword_at(lower: &str, i: usize) -> Option<(usize, bool)> {
    let b = lower.as_bytes();
    // Header names count at a word start only; secret words anywhere (`PGPASSWORD=x`).
    let word_start = i == 0 || !b[i - 1].is_ascii_alphabetic();
    let rest = &lower[i..];
    for (kw, whole) in [
        ("authorization", true),
        ("proxy-authorization", true),
        ("cookie", true),
        ("x-api-key", true),
        ("identified by", false),
        ("password", false),
        ("passwd", false),
        ("secret", false),
        ("token", false),
        ("apikey", false),
        ("api_key", false),
        ("api-key", false),
    ] {
        if rest.starts_with(kw) && (word_start || !whole) {
            return Some((i + kw.len(), whole));
        }
    }
    None
}

/// A URL for a log line: credentials and sensitive query values redacted.
pub fn url(s: &str) -> String {
    userinfo(s)
}

/// `scheme://user:pass@host` -> `scheme://REDACTED:REDACTED@host`, and sensitive query values.
fn userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("://") {
        let after = pos + 3;
        out.push_str(&rest[..after]);
        let tail = &rest[after..];
        let auth_end = tail
            .find(['/', '?', '#', ' ', '\'', '"'])
            .unwrap_or(tail.len());
        match tail[..auth_end].rfind('@') {
            Some(at) => {
                out.push_str("REDACTED:REDACTED");
                out.push_str(&tail[at..auth_end]);
            }
            None => out.push_str(&tail[..auth_end]),
        }
        let tail = &tail[auth_end..];
        let url_end = tail.find([' ', '\'', '"']).unwrap_or(tail.len());
        out.push_str(&redact_path_query(&tail[..url_end]));
        rest = &tail[url_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_query_values_are_redacted() {
        assert_eq!(
            query("a=1&token=abc&Password=x&sig=y"),
            "a=1&token=REDACTED&Password=REDACTED&sig=REDACTED"
        );
        assert_eq!(
            query("AWSAccessKeyId=AKIA&x=2&flag"),
            "AWSAccessKeyId=REDACTED&x=2&flag"
        );
        assert_eq!(query("api%5Fkey=z"), "api%5Fkey=REDACTED");
        assert_eq!(query(""), "");
    }

    #[test]
    fn query_keys_are_compared_percent_decoded() {
        assert_eq!(query("api%5fkey=z"), "api%5fkey=REDACTED");
        assert_eq!(query("pass%77ord=x&q=1"), "pass%77ord=REDACTED&q=1");
        assert_eq!(query("%54OKEN=x"), "%54OKEN=REDACTED");
        assert_eq!(query("tok%en=x&to%2=y&%=z"), "tok%en=x&to%2=y&%=z");
        let long = format!("{}=v", "k".repeat(MAX_SENSITIVE_KEY_LEN + 1));
        assert_eq!(query(&long), long);
        assert!(
            SENSITIVE_KEYS
                .iter()
                .all(|k| k.len() < MAX_SENSITIVE_KEY_LEN)
        );
        assert!(is_sensitive("x-amz-security-token"));
        assert!(!is_sensitive("tokens"));
        assert!(!is_sensitive(""));
    }

    #[test]
    fn url_full_redacts_credentials_and_query() {
        assert_eq!(
            url_full("http", "api:8080", "/v1/x?access_token=t&q=1"),
            "http://api:8080/v1/x?access_token=REDACTED&q=1"
        );
        assert_eq!(
            url_full(
                "http",
                "ignored",
                "http://user:pw@proxy.local:3128/p?secret=s"
            ),
            "http://REDACTED:REDACTED@proxy.local:3128/p?secret=REDACTED"
        );
        assert_eq!(url_full("http", "h", "/plain"), "http://h/plain");
    }

    fn argv_of(s: &[&str]) -> Vec<String> {
        argv(&s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn secret_arguments_are_redacted() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["app", "--db-password=hunter2", "--port=80"],
                &["app", "--db-password=REDACTED", "--port=80"],
            ),
            (
                &["app", "--password", "hunter2", "--verbose"],
                &["app", "--password", "REDACTED", "--verbose"],
            ),
            (
                &["mysql", "-u", "root", "-phunter2"],
                &["mysql", "-u", "root", "-pREDACTED"],
            ),
            (
                &["sshpass", "-p", "hunter2", "ssh"],
                &["sshpass", "-p", "REDACTED", "ssh"],
            ),
            (
                &["psql", "-c", "ALTER ROLE app PASSWORD 'hunter2'"],
                &["psql", "-c", "ALTER ROLE app PASSWORD 'REDACTED'"],
            ),
            (
                &["mysql", "-e", "CREATE USER u IDENTIFIED BY 'hunter2'"],
                &["mysql", "-e", "CREATE USER u IDENTIFIED BY 'REDACTED'"],
            ),
            (
                &["env", "API_KEY=abc", "X=1"],
                &["env", "API_KEY=REDACTED", "X=1"],
            ),
            (&["tool", "token=abc"], &["tool", "token=REDACTED"]),
            (
                &["tool", "--api-key", "abc"],
                &["tool", "--api-key", "REDACTED"],
            ),
            (
                &["tool", "--client-secret=s"],
                &["tool", "--client-secret=REDACTED"],
            ),
            (
                &["tool", "--aws-secret-access-key", "s"],
                &["tool", "--aws-secret-access-key", "REDACTED"],
            ),
            (
                &[
                    "psql",
                    "postgres://app:hunter2@db:5432/app?sslmode=require&password=x",
                ],
                &[
                    "psql",
                    "postgres://REDACTED:REDACTED@db:5432/app?sslmode=require&password=REDACTED",
                ],
            ),
            (
                &["curl", "-H", "Authorization: Bearer abc.def", "http://x/"],
                &["curl", "-H", "Authorization: REDACTED", "http://x/"],
            ),
            (&["worker", "Qz7Xm2Lp9Vb4Nk8RtY3w"], &["worker", "REDACTED"]),
            (
                &[
                    "gunicorn",
                    "--bind",
                    "0.0.0.0:8000",
                    "app.wsgi:application",
                    "--keyfile",
                    "/k.pem",
                ],
                &[
                    "gunicorn",
                    "--bind",
                    "0.0.0.0:8000",
                    "app.wsgi:application",
                    "--keyfile",
                    "/k.pem",
                ],
            ),
            (
                &["nginx", "-g", "daemon off;"],
                &["nginx", "-g", "daemon off;"],
            ),
            (
                &["python3", "-m", "http.server", "8080"],
                &["python3", "-m", "http.server", "8080"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(argv_of(input), *want, "{input:?}");
        }
    }

    #[test]
    fn secret_names() {
        for n in [
            "password",
            "--db-password",
            "API_KEY",
            "pgpass",
            "token",
            "auth",
            "x-auth-token",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in [
            "keyboard",
            "passenger",
            "port",
            "bind",
            "keyfile",
            "verbose",
            "author",
        ] {
            assert!(!secret_name(n), "{n}");
        }
    }
}
