//! The extension's allocator: the system allocator, except that large blocks are kept for
//! reuse when freed instead of going back to the kernel.
//!
//! A plan of a million partitions works in about 100 MB of arrays that live for one call.
//! Fresh from the kernel, every 4 KiB page of them costs a page fault and a zeroing, which
//! measured a third of the call; a leader plans again at every rebalance, so it keeps them.
//! A plan of 10,000 partitions works in arrays of 40–80 KB, below the size from which the
//! system allocator maps blocks of their own, but it gives the top of its heap back to the
//! kernel all the same: with an earlier plan's output still held by the caller, kept blocks
//! took that plan from 690 to 500 µs.
//! Blocks of at least [`MIN_BLOCK`] bytes are rounded up to a size class (at most 1/8 larger)
//! and, when freed, kept on a free list of their class while the kept total stays under
//! [`MAX_KEPT`]; anything else goes to the system allocator as usual. Only this extension's
//! own allocations are concerned: the Python process's allocator is left alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks from this size up are kept for reuse.
pub const MIN_BLOCK: usize = 16 << 10;
/// The most the free lists hold, in bytes; what would go beyond is returned to the system.
pub const MAX_KEPT: usize = 512 << 20;
/// The alignment the system allocator gives large blocks anyway.
const ALIGN: usize = 16;

/// Free blocks by size class: ``(class size, addresses)``, and their total size.
struct Kept {
    lists: Vec<(usize, Vec<usize>)>,
    total: usize,
}

static KEPT: Mutex<Kept> = Mutex::new(Kept {
    lists: Vec::new(),
    total: 0,
});

/// ``size`` rounded up to its class: the next multiple of 1/8 of its highest power of two.
fn class_of(size: usize) -> usize {
    let top = usize::BITS - 1 - size.leading_zeros();
    let step = 1usize << (top - 3);
    size.div_ceil(step) * step
}

pub struct Retaining;

unsafe impl GlobalAlloc for Retaining {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < MIN_BLOCK || layout.align() > ALIGN {
            return System.alloc(layout);
        }
        let class = class_of(layout.size());
        if let Ok(mut kept) = KEPT.lock() {
            if let Some(k) = kept.lists.iter().position(|(c, _)| *c == class) {
                if let Some(ptr) = kept.lists[k].1.pop() {
                    kept.total -= class;
                    return ptr as *mut u8;
                }
            }
        }
        System.alloc(Layout::from_size_align_unchecked(class, ALIGN))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < MIN_BLOCK || layout.align() > ALIGN {
            return System.dealloc(ptr, layout);
        }
        let class = class_of(layout.size());
        if let Ok(mut kept) = KEPT.lock() {
            if kept.total + class <= MAX_KEPT {
                // The lists' own growth allocates small blocks only: no recursion into here.
                match kept.lists.iter().position(|(c, _)| *c == class) {
                    Some(k) => kept.lists[k].1.push(ptr as usize),
                    None => kept.lists.push((class, vec![ptr as usize])),
                }
                kept.total += class;
                return;
            }
        }
        System.dealloc(ptr, Layout::from_size_align_unchecked(class, ALIGN))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let small = |size: usize| size < MIN_BLOCK || layout.align() > ALIGN;
        if small(layout.size()) && small(new_size) {
            return System.realloc(ptr, layout, new_size);
        }
        if !small(layout.size())
            && !small(new_size)
            && class_of(layout.size()) == class_of(new_size)
        {
            return ptr; // the block is already that large
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let out = self.alloc(new_layout);
        if !out.is_null() {
            std::ptr::copy_nonoverlapping(ptr, out, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        out
    }
}

/// Return every kept block to the system; the bytes released.
pub fn release() -> usize {
    let Ok(mut kept) = KEPT.lock() else {
        return 0;
    };
    let lists = std::mem::take(&mut kept.lists);
    let total = std::mem::replace(&mut kept.total, 0);
    drop(kept);
    for (class, ptrs) in lists {
        for ptr in ptrs {
            unsafe {
                System.dealloc(
                    ptr as *mut u8,
                    Layout::from_size_align_unchecked(class, ALIGN),
                )
            };
        }
    }
    total
}

/// Bytes held in the free lists now.
pub fn kept() -> usize {
    KEPT.lock().map(|k| k.total).unwrap_or(0)
}
