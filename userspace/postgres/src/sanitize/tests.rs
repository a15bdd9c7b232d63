//! Sanitizer table tests.
