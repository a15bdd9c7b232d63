//! `cargo xtask`: developer entry points.
fn main() {}
