//! What a test binary that counts its allocations (`stats_alloc` as its global allocator) holds.

use std::alloc::System;

use stats_alloc::Region;

/// Bytes allocated and not freed since `region` began (negative when more was freed).
/// `stats_alloc` counts what a reallocation adds in `bytes_allocated` and what it takes away in
/// `bytes_deallocated`; its `bytes_reallocated` is the same change again, so it is left out.
pub fn live(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize
}
