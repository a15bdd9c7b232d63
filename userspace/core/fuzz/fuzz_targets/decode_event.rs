//! Fuzzes ring-buffer record decoding (`sonde_core::event::decode`): any bytes the kernel side
//! could hand over (short, lying lengths, unknown kinds) give a typed error or an event whose
//! payload lies inside the record, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_core::event::{KernelEvent, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(KernelEvent::Data { payload, .. }) = decode(data) {
        let start = payload.as_ptr() as usize;
        let base = data.as_ptr() as usize;
        assert!(start >= base && start + payload.len() <= base + data.len());
    }
});
