//! A node's heap touched at start is reused by the threads that serve requests, so they grow
//! into it without page faults. Alone in its file: the figures are this process's allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GROWTH_BYTES: usize = 64 << 20;
/// YCSB's value size, about what a memtable cell holds.
const VALUE_BYTES: usize = 1000;

fn thread_minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: getrusage succeeded, so it initialised the struct.
    unsafe { usage.assume_init() }.ru_minflt
}

/// On a thread of its own, as a request thread grows the heap that `main` touched: allocates
/// and writes `GROWTH_BYTES` in values, and returns the page faults that took.
fn grow_on_another_thread() -> (Vec<Vec<u8>>, i64) {
    std::thread::spawn(|| {
        let before = thread_minor_faults();
        let values: Vec<Vec<u8>> = (0..GROWTH_BYTES / VALUE_BYTES)
            .map(|i| vec![i as u8; VALUE_BYTES])
            .collect();
        (values, thread_minor_faults() - before)
    })
    .join()
    .expect("the growing thread")
}

#[test]
fn growth_into_a_prefaulted_heap_takes_few_page_faults() {
    node::memory::keep_freed_memory();
    let (_cold, cold_faults) = grow_on_another_thread();
    // Without huge pages 64 MiB is 16,384 faults; with them, 32.
    assert!(
        cold_faults >= 32,
        "a cold heap grew with only {cold_faults} faults"
    );
    node::memory::prefault(2 * GROWTH_BYTES);
    let (_warm, warm_faults) = grow_on_another_thread();
    assert!(
        warm_faults * 4 <= cold_faults,
        "growing into a prefaulted heap took {warm_faults} faults, a cold one {cold_faults}"
    );
}
