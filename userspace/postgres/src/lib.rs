//! PostgreSQL wire-protocol v3 parser and SQL sanitizer.
