//! Incremental HTTP/1.x parser: byte streams in, request/response exchanges out.
