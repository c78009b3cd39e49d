//! Resident memory for the client-RSS measurements: a heap block with every page written.

use std::time::{Duration, Instant};

/// Bytes per page written: 4 KiB, the smallest page size on Linux (writing more often than
/// the real page size costs a little time and changes nothing).
const PAGE: usize = 4096;

/// A heap block whose every page has been written, so it is resident and private to this
/// process (a `fork` must copy its page tables). Freed (returned to the kernel: allocations
/// this large are `mmap`ed) on drop.
#[derive(Debug)]
pub struct Ballast {
    block: Vec<u8>,
    touch_time: Duration,
}

impl Ballast {
    /// Allocates `bytes` and writes one byte in every 4 KiB page.
    ///
    /// # Panics
    /// If the allocation fails (the process aborts, as for any failed allocation).
    pub fn new(bytes: usize) -> Ballast {
        let start = Instant::now();
        // `vec![0; n]` would map zero pages lazily (calloc); writing each page makes it
        // resident. Non-zero values, so no page can be shared with the zero page.
        let mut block = vec![0u8; bytes];
        for (i, page) in block.chunks_mut(PAGE).enumerate() {
            page[0] = (i as u8) | 1;
        }
        std::hint::black_box(&mut block);
        Ballast {
            block,
            touch_time: start.elapsed(),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.block.len()
    }

    /// Whether the block is empty (size 0: the "small client" baseline).
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    /// How long allocating and writing took.
    pub fn touch_time(&self) -> Duration {
        self.touch_time
    }
}

/// Formats a byte count in binary units (`256 MiB`, `8 GiB`).
pub fn fmt_bytes(bytes: usize) -> String {
    const MIB: usize = 1 << 20;
    const GIB: usize = 1 << 30;
    if bytes == 0 {
        "0".to_owned()
    } else if bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballast_is_resident() {
        let before = crate::procfs::vm_rss_kib("self").unwrap();
        let b = Ballast::new(64 << 20);
        let after = crate::procfs::vm_rss_kib("self").unwrap();
        assert_eq!(b.len(), 64 << 20);
        assert!(after >= before + 60 * 1024, "{before} -> {after}");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(0), "0");
        assert_eq!(fmt_bytes(256 << 20), "256 MiB");
        assert_eq!(fmt_bytes(8 << 30), "8 GiB");
    }
}
