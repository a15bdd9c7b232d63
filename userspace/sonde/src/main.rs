//! `sonde`: the node daemon's command line.
fn main() {}
