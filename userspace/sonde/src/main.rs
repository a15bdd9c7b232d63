//! `sonde`: the node daemon's command line.
use std::process::ExitCode;

use clap::Parser;
use sonde::config::{Cli, Command, Config};

/// mimalloc instead of glibc malloc: the capture thread allocates and frees small objects per
/// request (heads, attributes, batches), and glibc's malloc/free/consolidate took over a third
/// of its CPU at max rate (perf, nginx under wrk). mimalloc's thread-local free lists make
/// that a fraction, and it returns freed pages to the kernel on its own (no arenas to cap).
/// Called so that its fast path is taken: see `sonde_core::alloc`.
#[global_allocator]
static ALLOCATOR: sonde_core::alloc::Allocator = sonde_core::alloc::Allocator;

fn main() -> ExitCode {
    // No 2 MiB pages for the heap: each fault on one zeroes the whole page, which showed as a
    // tenth of the capture thread's CPU while the span batches grew. Before anything is built.
    // SAFETY: mimalloc options may be changed at any time; this one only affects new memory.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 0);
    }
    // Nor transparent huge pages: mimalloc still asks for them (MADV_HUGEPAGE) on the memory
    // it maps, and a first touch of such a region zeroes and keeps 2 MiB for buffers of tens
    // of KiB. Under nginx at max rate the RSS was 84 MiB with them and 64 MiB without, CPU
    // per request unchanged within noise (same-run A/B). Inherited by threads; sonde runs no
    // other programs.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "sonde: could not disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SONDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    let config = match Config::resolve(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonde: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sonde: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sonde::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sonde: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
