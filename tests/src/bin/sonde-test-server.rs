//! `sonde-test-server`: the HTTP/1.1 server of the end-to-end tests (see `sonde_e2e::test_server`).

fn main() {
    if let Err(e) = sonde_e2e::test_server::main_with_args(std::env::args()) {
        eprintln!("sonde-test-server: {e}");
        std::process::exit(1);
    }
}
