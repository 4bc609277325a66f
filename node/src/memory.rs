//! What a request pays for heap memory. kv-node allocates with mimalloc, and on a VM whose free
//! memory goes back to the host, the first touch of a page costs ~7 µs per 4 KiB in the kernel
//! (~3.6 ms per 2 MiB huge page), paid by whichever request thread grows the heap. Two settings
//! keep that off the request path:
//! - freed memory is never given back to the OS ([`keep_freed_memory`]), so a page is faulted in
//!   once per process;
//! - at start the node touches its working size and frees it into the allocator ([`prefault`]),
//!   as Scylla takes its memory at start, so memtables and caches fill without faulting.

use std::time::{Duration, Instant};

/// mimalloc's purge delay: -1, never return freed memory to the OS, so the node's RSS stays at
/// its high-water mark (bounded by the caches, memtables and queues the config sizes), as a
/// JVM heap or Scylla's memory does. Its default (1 s in the mimalloc 3 linked here, 10 ms in
/// mimalloc 2) made a busy node give back and fault in again the buffers of every request
/// (page faults 9% of a node's CPU under YCSB-A); 10 s still faulted 59.5k pages per 40 s on 3
/// nodes; never purging halved the seconds with a 50 ms operation at half of peak
/// (docs/benchmarks.md). `MIMALLOC_PURGE_DELAY` in the environment still wins.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = -1;
/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (mimalloc.h). libmimalloc-sys's own
/// constants follow mimalloc 2's numbering, so the value is named here and used only after
/// `mi_version` confirms major version 3.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// Allocations of this size come from mimalloc's regular 512 KiB pages, which go back to the
/// shared arena when freed, so any thread reuses them. One 512 MiB allocation instead left the
/// nodes' RSS growing by 44-104 MiB during a 300k-insert load, against 16-24 MiB this way.
const PREFAULT_CHUNK_BYTES: usize = 64 << 10;

extern "C" {
    fn mi_version() -> std::ffi::c_int;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    fn mi_collect(force: bool);
}

/// Makes the allocator keep what is freed (see [`ALLOCATOR_PURGE_DELAY_MS`]); call first thing
/// in `main`. Does nothing when `MIMALLOC_PURGE_DELAY` is set or the linked mimalloc is not
/// version 3.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both are plain functions of the linked mimalloc with C integer arguments; setting
    // an option is allowed at any time.
    unsafe {
        if mi_version() / 10_000 == 3 {
            mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
    }
}

/// Touches `bytes` of heap, every page of it, then frees it into the allocator, which keeps it
/// after [`keep_freed_memory`]. Returns how long it took.
pub fn prefault(bytes: usize) -> Duration {
    let started = Instant::now();
    // `black_box`: stores to memory that is freed unread are otherwise dead to the optimiser.
    let chunks: Vec<Vec<u8>> = (0..bytes / PREFAULT_CHUNK_BYTES)
        .map(|_| std::hint::black_box(vec![1u8; PREFAULT_CHUNK_BYTES]))
        .collect();
    drop(std::hint::black_box(chunks));
    // SAFETY: a plain function of the linked mimalloc; it hands the pages this thread emptied
    // back to the arena that every thread allocates from, without purging them (delay -1).
    unsafe { mi_collect(true) };
    started.elapsed()
}

/// `MemAvailable` of /proc/meminfo in bytes; `None` where there is no such file or line.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_available(&meminfo)
}

fn parse_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib.checked_mul(1024)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_memory_is_read_in_bytes() {
        let meminfo = "MemTotal:       24683632 kB\nMemFree:        21683632 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(parse_available(meminfo), Some(23_000_000 * 1024));
    }

    #[test]
    fn unreadable_meminfo_gives_no_figure() {
        assert_eq!(parse_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_available("MemAvailable: lots kB\n"), None);
        assert_eq!(parse_available("MemAvailable: 12 MB\n"), None);
        assert_eq!(
            parse_available("MemAvailable: 18446744073709551615 kB\n"),
            None
        );
    }
}
