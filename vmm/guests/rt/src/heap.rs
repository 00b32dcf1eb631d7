//! The global allocator: power-of-two size classes (16 B .. 64 KiB) with free
//! lists, carved from the heap region by a bump pointer; larger blocks are
//! bump-allocated and kept on a first-fit list when freed. One CPU and no
//! allocation in interrupt handlers, so no locking is needed.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const CLASSES: usize = 13; // 16 << 12 = 64 KiB
const MIN: usize = 16;

struct State {
    next: usize,
    end: usize,
    free: [usize; CLASSES],
    /// Large freed blocks: singly linked, each starting with [next, size].
    large: usize,
}

struct Heap(UnsafeCell<State>);

// SAFETY: the guest has one CPU and the only interrupt handler (the timer)
// never allocates, so accesses to the state never overlap.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap(UnsafeCell::new(State {
    next: 0,
    end: 0,
    free: [0; CLASSES],
    large: 0,
}));

pub(crate) fn init(start: u64, len: u64) {
    // SAFETY: called once by `ftvm_rt_main` before any allocation.
    let s = unsafe { &mut *HEAP.0.get() };
    s.next = start as usize;
    s.end = (start + len) as usize;
}

fn class(size: usize) -> Option<usize> {
    let size = size.max(MIN).next_power_of_two();
    let c = (size / MIN).trailing_zeros() as usize;
    (c < CLASSES).then_some(c)
}

impl State {
    fn bump(&mut self, size: usize, align: usize) -> *mut u8 {
        let start = (self.next + align - 1) & !(align - 1);
        match start.checked_add(size) {
            Some(end) if end <= self.end => {
                self.next = end;
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }
}

// SAFETY: blocks handed out never overlap (bump pointer only moves forward,
// freed blocks are reused only for requests of the same class or not larger
// than their size with compatible alignment), and are inside the heap region
// the VMM reserved.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see `unsafe impl Sync for Heap`.
        let s = unsafe { &mut *self.0.get() };
        let size = layout.size().max(layout.align());
        if let Some(c) = class(size) {
            let head = s.free[c];
            if head != 0 {
                // SAFETY: `head` is a freed block of this class holding the
                // next pointer in its first word.
                s.free[c] = unsafe { *(head as *const usize) };
                return head as *mut u8;
            }
            let bsize = MIN << c;
            return s.bump(bsize, bsize.min(4096));
        }
        // Large: first fit on the freed list (alignment up to 4 KiB).
        let mut prev: *mut usize = &mut s.large;
        // SAFETY: the list links freed large blocks written by `dealloc`.
        unsafe {
            while *prev != 0 {
                let b = *prev;
                let bsize = *((b + 8) as *const usize);
                if bsize >= layout.size() && b.is_multiple_of(layout.align()) {
                    *prev = *(b as *const usize);
                    return b as *mut u8;
                }
                prev = b as *mut usize;
            }
        }
        s.bump(layout.size(), layout.align().max(4096))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see `unsafe impl Sync for Heap`.
        let s = unsafe { &mut *self.0.get() };
        let size = layout.size().max(layout.align());
        let p = ptr as usize;
        // SAFETY: `ptr` came from `alloc` with this layout, so it is at least
        // 16 bytes and ours to reuse for the free-list links.
        unsafe {
            match class(size) {
                Some(c) => {
                    *(p as *mut usize) = s.free[c];
                    s.free[c] = p;
                }
                None => {
                    *(p as *mut usize) = s.large;
                    *((p + 8) as *mut usize) = layout.size();
                    s.large = p;
                }
            }
        }
    }
}
