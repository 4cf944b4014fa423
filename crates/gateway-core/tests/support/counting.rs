//! What a test binary that counts its allocations (`stats_alloc` as its global allocator) holds.

use std::alloc::System;

use stats_alloc::Region;

/// Bytes allocated and not freed since `region` began (negative when more was freed).
pub fn live(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize + c.bytes_reallocated - c.bytes_deallocated as isize
}
