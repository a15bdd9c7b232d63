//! Incremental decoder for `Transfer-Encoding: chunked` bodies.
//!
//! It only finds where the body ends and counts the decoded data bytes; data is never copied.
//! Size lines and trailers are walked byte by byte (they are short); chunk data is skipped in bulk.

/// Longest chunk-size line (size plus extensions) accepted, in bytes.
const MAX_SIZE_LINE: u32 = 4 * 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILER_BYTES: u32 = 64 * 1024;

/// Why a chunked body could not be followed any further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// A chunk-size line did not start with a hex digit or held an unexpected byte.
    BadSize,
    /// The chunk size does not fit in 64 bits.
    SizeOverflow,
    /// A chunk-size line or the trailer section exceeded its limit.
    TooLong,
    /// Chunk data was not followed by CRLF.
    BadDelimiter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `digits` is how many were seen.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: optional whitespace, extensions and CR, up to the LF.
    Ext {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    /// Expecting the CR (or bare LF) that closes chunk data.
    DataCr,
    /// Expecting the LF that closes chunk data.
    DataLf,
    /// In the trailer section; `line_len` counts non-CR bytes of the current line.
    Trailer {
        line_len: u32,
    },
    Done,
}

/// What one call to [`Chunked::feed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Input bytes that belong to the body (the rest belongs to the next message).
    pub consumed: usize,
    /// Decoded data bytes among them.
    pub data_bytes: u64,
    /// The terminating empty line after the last chunk and trailers was reached.
    pub done: bool,
}

/// State of one chunked body in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: State,
    /// Bytes of the current size line, or of all trailers.
    line_bytes: u32,
}

impl Chunked {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line_bytes: 0,
        }
    }

    /// Consumes body bytes from `input` until the body ends or the input runs out.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let mut pos = 0usize;
        let mut data_bytes = 0u64;
        while pos < input.len() {
            if let State::Data { remaining } = self.state {
                let avail = input.len().saturating_sub(pos);
                let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                pos = pos.saturating_add(take);
                let take = take as u64;
                data_bytes = data_bytes.saturating_add(take);
                let left = remaining.saturating_sub(take);
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                continue;
            }
            if self.state == State::Done {
                break;
            }
            let Some(&byte) = input.get(pos) else {
                break;
            };
            pos = pos.saturating_add(1);
            self.step(byte)?;
            if self.state == State::Done {
                break;
            }
        }
        Ok(Progress {
            consumed: pos,
            data_bytes,
            done: self.state == State::Done,
        })
    }

    /// `n` body bytes were not captured. Returns `Some(n)` when they fell inside chunk data (and
    /// were counted as data), `None` when the position in the framing is lost.
    pub(crate) fn skip_lost(&mut self, n: u64) -> Option<u64> {
        match self.state {
            State::Data { remaining } if n <= remaining => {
                let left = remaining.saturating_sub(n);
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                Some(n)
            }
            _ => None,
        }
    }

    fn size_line_byte(&mut self) -> Result<(), ChunkError> {
        self.line_bytes = self.line_bytes.saturating_add(1);
        if self.line_bytes > MAX_SIZE_LINE {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }

    fn end_size_line(&mut self, value: u64) {
        self.line_bytes = 0;
        self.state = if value == 0 {
            State::Trailer { line_len: 0 }
        } else {
            State::Data { remaining: value }
        };
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        match self.state {
            State::Size { value, digits } => {
                self.size_line_byte()?;
                if let Some(d) = hex_value(byte) {
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(ChunkError::SizeOverflow)?;
                    self.state = State::Size {
                        value,
                        digits: digits.saturating_add(1),
                    };
                } else if digits == 0 {
                    return Err(ChunkError::BadSize);
                } else {
                    match byte {
                        b'\n' => self.end_size_line(value),
                        b';' | b' ' | b'\t' | b'\r' => self.state = State::Ext { value },
                        _ => return Err(ChunkError::BadSize),
                    }
                }
            }
            State::Ext { value } => {
                self.size_line_byte()?;
                if byte == b'\n' {
                    self.end_size_line(value);
                }
            }
            State::DataCr => match byte {
                b'\r' => self.state = State::DataLf,
                b'\n' => {
                    self.state = State::Size {
                        value: 0,
                        digits: 0,
                    }
                }
                _ => return Err(ChunkError::BadDelimiter),
            },
            State::DataLf => match byte {
                b'\n' => {
                    self.state = State::Size {
                        value: 0,
                        digits: 0,
                    }
                }
                _ => return Err(ChunkError::BadDelimiter),
            },
            State::Trailer { line_len } => {
                self.line_bytes = self.line_bytes.saturating_add(1);
                if self.line_bytes > MAX_TRAILER_BYTES {
                    return Err(ChunkError::TooLong);
                }
                self.state = match byte {
                    b'\n' if line_len == 0 => State::Done,
                    b'\n' => State::Trailer { line_len: 0 },
                    b'\r' => State::Trailer { line_len },
                    _ => State::Trailer {
                        line_len: line_len.saturating_add(1),
                    },
                };
            }
            // Handled by the caller without stepping.
            State::Data { .. } | State::Done => {}
        }
        Ok(())
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_all(input: &[u8]) -> Result<Progress, ChunkError> {
        Chunked::new().feed(input)
    }

    #[test]
    fn simple_body_with_extension_and_trailer() {
        let body = b"5;name=val\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let p = run_all(body).unwrap();
        assert!(p.done);
        assert_eq!(p.data_bytes, 11);
        assert_eq!(&body[p.consumed..], b"NEXT");
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let body = b"A\r\n0123456789\r\n1F \r\n0123456789012345678901234567890\r\n0\r\n\r\n";
        let mut c = Chunked::new();
        let mut total = 0;
        let mut done = false;
        for (i, b) in body.iter().enumerate() {
            let p = c.feed(std::slice::from_ref(b)).unwrap();
            total += p.data_bytes;
            if p.done {
                assert_eq!(i, body.len() - 1);
                done = true;
            }
        }
        assert!(done);
        assert_eq!(total, 41);
    }

    #[test]
    fn bare_lf_accepted() {
        let p = run_all(b"3\nabc\n0\n\n").unwrap();
        assert!(p.done);
        assert_eq!(p.data_bytes, 3);
    }

    #[test]
    fn errors() {
        assert_eq!(run_all(b"zz\r\n"), Err(ChunkError::BadSize));
        assert_eq!(run_all(b"\r\n"), Err(ChunkError::BadSize));
        assert_eq!(run_all(b"3\r\nabcX"), Err(ChunkError::BadDelimiter));
        assert_eq!(
            run_all(b"fffffffffffffffff\r\n"),
            Err(ChunkError::SizeOverflow)
        );
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'x', 5000));
        assert_eq!(run_all(&long), Err(ChunkError::TooLong));
    }

    #[test]
    fn lost_bytes_inside_data() {
        let mut c = Chunked::new();
        let p = c.feed(b"a\r\n012").unwrap();
        assert_eq!(p.data_bytes, 3);
        assert_eq!(c.skip_lost(7), Some(7));
        let p = c.feed(b"\r\n0\r\n\r\n").unwrap();
        assert!(p.done);
        assert_eq!(c.skip_lost(1), None);
    }
}
