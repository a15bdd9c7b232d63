//! sonde's kernel programs: learn which fds are TCP sockets (accept/connect), copy the bytes
//! that read/write-family syscalls move on them into one ring buffer, and report closes and
//! process exits. Everything else (addresses missing here, protocol parsing, pairing, spans)
//! is the daemon's job: these programs stay small so their cost in the traced process is low.
//!
//! Only syscall tracepoints and ordinary tracepoints are used (no kprobes, no fentry): they
//! are a stable ABI and the only hooks every target machine has.
#![no_std]
#![no_main]

mod lifecycle;
mod maps;
mod syscalls;
mod tcp_health;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
