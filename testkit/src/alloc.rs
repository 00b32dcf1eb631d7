//! A counting global allocator for the "no allocation per entry" tests.
//!
//! A test binary installs it (`#[global_allocator] static A: Counting =
//! Counting;`) and measures a closure with [`allocs_in`]: only allocations
//! made on the calling thread while the closure runs are counted, so other
//! threads (the channel's, the test harness's) do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator and counts allocations on threads that
/// are measuring ([`allocs_in`]).
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static LAST_SIZE: Cell<usize> = const { Cell::new(0) };
}

fn counted(size: usize) {
    // try_with: the allocator may run while thread locals are torn down.
    if COUNT_HERE.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        let _ = LAST_SIZE.try_with(|s| s.set(size));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the allocations it made on this
/// thread (counted only where [`Counting`] is the global allocator).
pub fn allocs_in<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCS.with(Cell::get);
    COUNT_HERE.with(|c| c.set(true));
    let r = f();
    COUNT_HERE.with(|c| c.set(false));
    (r, ALLOCS.with(Cell::get) - before)
}

/// Size of the last allocation counted on this thread (for messages).
pub fn last_size() -> usize {
    LAST_SIZE.with(Cell::get)
}
