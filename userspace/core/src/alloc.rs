//! The daemon's global allocator: mimalloc, called through its unaligned entry points
//! whenever the alignment asked for is one every mimalloc block already has.
//!
//! The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`. In
//! mimalloc 3 that takes the fast path only while the size class's page has a block on its
//! free list; otherwise a size that is not a power of two falls to an over-allocating path
//! (size + alignment, in another size class): over a third of the allocator's instructions in
//! the pipeline bench. Every mimalloc block is aligned to a machine word (block sizes
//! are whole words, pages start aligned), so requests aligned to a word or less go to
//! `mi_malloc`, `mi_zalloc` and `mi_realloc`: 4% fewer instructions per request in the
//! pipeline bench (callgrind), and its time per request about 5% lower, alternated. Larger
//! alignments still go to the aligned entry points.
use std::alloc::{GlobalAlloc, Layout};

use libmimalloc_sys as mi;

/// What every mimalloc block is aligned to.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc for every allocation; set with `#[global_allocator]` by the daemon (and by the
/// pipeline bench, to measure what the daemon runs).
pub struct Allocator;

// SAFETY: every block comes from mimalloc, aligned as asked (the unaligned entry points only
// for alignments mimalloc always gives), and goes back to it with `mi_free` or `mi_realloc*`.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C calls; the size is the caller's non-zero layout size.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the alignment is kept.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let a = Allocator;
        let sizes = [
            1usize,
            3,
            7,
            8,
            12,
            24,
            40,
            48,
            100,
            1000,
            4097,
            70_000,
            3 << 20,
        ];
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            // Many of each, so that pages run out of free blocks and the slow paths run too.
            let mut live = Vec::new();
            for round in 0..64 {
                // Large blocks once: the rounds are for the small pages to run dry.
                for &size in sizes.iter().filter(|&&s| round == 0 || s <= 4097) {
                    let layout = Layout::from_size_align(size, align).expect("layout");
                    let zeroed = round % 2 == 0;
                    // SAFETY: non-zero sizes; every block is freed below with its layout.
                    let p = unsafe {
                        if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        }
                    };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    // SAFETY: `p` holds `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
                    if zeroed {
                        assert!(bytes.iter().all(|&b| b == 0));
                    }
                    bytes.fill(0xa5);
                    live.push((p, layout));
                }
            }
            for (p, layout) in live.drain(..) {
                let grown = layout.size() * 2 + 1;
                // SAFETY: `p` is live with `layout`; the new size is non-zero.
                let q = unsafe { a.realloc(p, layout, grown) };
                assert_eq!(q as usize % align, 0);
                // SAFETY: the first `layout.size()` bytes were kept.
                let kept = unsafe { std::slice::from_raw_parts(q, layout.size()) };
                assert!(kept.iter().all(|&b| b == 0xa5));
                let new = Layout::from_size_align(grown, align).expect("layout");
                // SAFETY: `q` is live with `new`.
                unsafe { a.dealloc(q, new) };
            }
        }
    }
}
