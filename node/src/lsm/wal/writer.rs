//! The appending side: group commit, the periodic syncer, preallocation and rotation.
//!
//! Group commit: an appender encodes its record, queues it, and if no write is in progress
//! becomes the leader: it takes every queued record, writes them with one `pwrite`, syncs once
//! if the policy says so, then wakes the followers whose records it covered. Records queued
//! meanwhile form the next group, so under load each fdatasync covers many appends.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use super::format::{
    encode_record, record_bytes_estimate, seal_group, SegmentHeader, HEADER_BYTES,
};
use super::{list_recyclable, segment_path, sync_dir};
use crate::lsm::error::IoContext;
use crate::lsm::options::Options;
use crate::lsm::{Clock, Error, Mutation, Result, SyncPolicy};

/// Appenders wait once this many bytes are queued behind the write in progress, so a slow disk
/// pushes back instead of buffering without bound.
const QUEUED_BYTES_MAX: usize = 64 << 20;
/// A group buffer larger than this is freed after its write rather than kept for reuse.
const SPARE_BUFFER_BYTES_MAX: usize = 4 << 20;
const NO_RECORD_YET: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub sync: SyncPolicy,
    /// Bytes reserved with `posix_fallocate` when a segment starts, and again each time the
    /// writes reach the end of the reservation (0 disables it).
    pub preallocate_bytes: u64,
    /// Retired segments kept for reuse (see [`super::retire_segment`]); 0 makes every segment
    /// a new file.
    pub recycle_segments_max: usize,
    pub segment_bytes_max: u64,
    /// Age of a segment's oldest record at which it should be rotated.
    pub segment_age_ms_max: u64,
}

impl From<&Options> for WalOptions {
    fn from(o: &Options) -> Self {
        WalOptions {
            sync: o.sync,
            preallocate_bytes: o.wal_preallocate_bytes,
            recycle_segments_max: o.wal_recycle_segments_max,
            segment_bytes_max: o.wal_segment_bytes_max,
            segment_age_ms_max: o.wal_segment_age_ms_max,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidOption {
                name,
                reason: reason.into(),
            })
        };
        if self.segment_bytes_max == 0 || self.segment_age_ms_max == 0 {
            return bad(
                "wal_segment",
                "segment_bytes_max and segment_age_ms_max must be positive",
            );
        }
        if let SyncPolicy::Periodic {
            interval_ms,
            writes,
        } = self.sync
        {
            if interval_ms == 0 || writes == 0 {
                return bad("sync", "periodic interval_ms and writes must be positive");
            }
        }
        Ok(())
    }
}

/// Counters since the [`Wal`] was created, across rotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    /// Record bytes written (segment headers not included).
    pub bytes: u64,
    /// fdatasyncs of record data.
    pub syncs: u64,
    /// Group writes: one `pwrite` each, so `records / group_commits` is the mean group size.
    pub group_commits: u64,
}

/// A segment made ready by [`Wal::prepare`] to become the current one.
pub struct NextSegment(Segment);

/// The write-ahead log: one open segment at a time. `Send + Sync`; share it by reference.
pub struct Wal {
    inner: Arc<Inner>,
    syncer: Option<JoinHandle<()>>,
    closed: bool,
}

struct Inner {
    dir: PathBuf,
    opts: WalOptions,
    clock: Arc<dyn Clock>,
    segment: RwLock<Arc<Segment>>,
    /// The segment before `segment` until it is synced and cut to its last record.
    retired: Mutex<Option<Arc<Segment>>>,
    queue: Mutex<Queue>,
    /// A group finished or the leader role was released.
    turn_over: Condvar,
    /// The queue drained below its bound.
    queue_room: Condvar,
    syncer_stop: Mutex<bool>,
    syncer_wake: Condvar,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
    group_commits: AtomicU64,
    /// `records` as it stood when the latest successful sync began.
    records_synced: AtomicU64,
}

struct Segment {
    id: u64,
    path: PathBuf,
    file: File,
    salt: u64,
    /// End of the records written so far; only the leader advances it.
    written: AtomicU64,
    /// Every byte before this offset has been fdatasynced.
    synced: AtomicU64,
    allocated: AtomicU64,
    first_record_ms: AtomicU64,
}

/// Appenders hold tickets in queue order; a ticket is done once `completed` reaches it.
struct Queue {
    queued: Vec<u8>,
    spare: Vec<u8>,
    tickets_issued: u64,
    completed: u64,
    leader: bool,
    /// Set by the first failed write or sync; every later append fails with it, because after
    /// a failed fsync the file's contents are unknown (retrying can report false success).
    failure: Option<String>,
    /// Tickets from this one on failed.
    failed_from: u64,
}

impl Wal {
    /// Creates segment `segment_id` in `dir` (it must not exist yet), from a retired file if one
    /// waits for reuse, else preallocated; header written and synced, directory synced.
    pub fn create(
        dir: &Path,
        segment_id: u64,
        opts: WalOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Wal> {
        opts.validate()?;
        let segment = Segment::create(dir, segment_id, &opts)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            opts,
            clock,
            segment: RwLock::new(Arc::new(segment)),
            retired: Mutex::new(None),
            queue: Mutex::new(Queue {
                queued: Vec::new(),
                spare: Vec::new(),
                tickets_issued: 0,
                completed: 0,
                leader: false,
                failure: None,
                failed_from: u64::MAX,
            }),
            turn_over: Condvar::new(),
            queue_room: Condvar::new(),
            syncer_stop: Mutex::new(false),
            syncer_wake: Condvar::new(),
            counters: Counters::default(),
        });
        let syncer = match opts.sync {
            SyncPolicy::Periodic {
                interval_ms,
                writes,
            } => Some(spawn_syncer(
                &inner,
                Duration::from_millis(interval_ms),
                writes,
            )?),
            SyncPolicy::Always | SyncPolicy::Never => None,
        };
        Ok(Wal {
            inner,
            syncer,
            closed: false,
        })
    }

    /// Appends one record: `seq` is the sequence number of the batch's first mutation. Returns
    /// once the record is as durable as the sync policy promises. An empty batch writes nothing.
    pub fn append(&self, seq: u64, mutations: &[Mutation]) -> Result<()> {
        if mutations.is_empty() {
            return Ok(());
        }
        self.inner
            .commit(record_bytes_estimate(mutations), |queued| {
                encode_record(seq, mutations, queued)
            })
    }

    /// Syncs and closes the current segment and starts `new_segment_id`. The old segment is cut
    /// to its last record, dropping the unused preallocation. If the new segment cannot be
    /// created, the old one stays current. [`Wal::prepare`], [`Wal::switch_to`] and
    /// [`Wal::seal_retired`] are the same in steps, for a caller that holds its writers off only
    /// for the switch.
    pub fn rotate(&self, new_segment_id: u64) -> Result<()> {
        let next = self.prepare(new_segment_id)?;
        self.switch_to(next)?;
        self.seal_retired()
    }

    /// Creates segment `new_segment_id` as [`Wal::create`] does, its header and the directory synced:
    /// the slow part of a rotation, done while appends go on.
    pub fn prepare(&self, new_segment_id: u64) -> Result<NextSegment> {
        let inner = &self.inner;
        fail::fail_point!("wal-prepare", |_| Err(Error::Injected("wal-prepare")));
        let segment = Segment::create(&inner.dir, new_segment_id, &inner.opts)?;
        Ok(NextSegment(segment))
    }

    /// Makes `next` the segment appends go to. It waits only for the group being written: the
    /// old segment is retired unsynced, and synced and cut to its last record by
    /// [`Wal::seal_retired`] or before any later sync, so a synced record of a newer segment
    /// always has every record before it durable too. Until then a crash can leave the old
    /// segment with a torn tail as well as the new one: replay allows it in the two newest.
    pub fn switch_to(&self, next: NextSegment) -> Result<()> {
        let _leadership = self.inner.take_leader_role();
        self.inner.seal_retired()?;
        let old = std::mem::replace(&mut *self.inner.segment.write(), Arc::new(next.0));
        *self.inner.retired.lock() = Some(old);
        Ok(())
    }

    /// Syncs the segment the last switch retired and cuts it to its last record.
    pub fn seal_retired(&self) -> Result<()> {
        self.inner.seal_retired()
    }

    /// True once the current segment holds records and reached `segment_bytes_max` bytes, or
    /// its oldest record is `segment_age_ms_max` old (an idle empty segment never asks).
    pub fn needs_rotation(&self) -> bool {
        let seg = self.inner.current();
        let first_ms = seg.first_record_ms.load(Ordering::Acquire);
        if first_ms == NO_RECORD_YET {
            return false;
        }
        let age_ms = self.inner.clock.now_ms().saturating_sub(first_ms);
        seg.written.load(Ordering::Acquire) >= self.inner.opts.segment_bytes_max
            || age_ms >= self.inner.opts.segment_age_ms_max
    }

    /// Syncs the current segment and cuts its unused preallocation, as `close` does, for an
    /// owner that shuts down without giving up the `Wal` by value: the next replay then reads
    /// only records, not megabytes of zeros. Later appends still work.
    pub fn trim(&self) -> Result<()> {
        let _leadership = self.inner.take_leader_role();
        self.inner.seal(&self.inner.current())
    }

    /// fdatasyncs everything written so far.
    pub fn sync(&self) -> Result<()> {
        self.inner.sync_segment(&self.inner.current())
    }

    pub fn segment_id(&self) -> u64 {
        self.inner.current().id
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.inner.counters;
        WalStats {
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            group_commits: c.group_commits.load(Ordering::Relaxed),
        }
    }

    /// Stops the syncer, then syncs the segment and cuts it to its last record.
    pub fn close(mut self) -> Result<()> {
        self.stop_syncer();
        self.closed = true;
        let _leadership = self.inner.take_leader_role();
        self.inner.seal(&self.inner.current())
    }

    fn stop_syncer(&mut self) {
        let Some(handle) = self.syncer.take() else {
            return;
        };
        *self.inner.syncer_stop.lock() = true;
        self.inner.syncer_wake.notify_all();
        if handle.join().is_err() {
            tracing::error!("the WAL syncer thread panicked");
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop_syncer();
        if self.closed {
            return;
        }
        if let Err(e) = self.inner.sync_segment(&self.inner.current()) {
            tracing::error!(error = %e, "final WAL sync on drop failed");
        }
    }
}

impl Inner {
    fn current(&self) -> Arc<Segment> {
        self.segment.read().clone()
    }

    /// Queues the record `encode` appends (about `record_bytes` long) and returns once its
    /// group is written. It is encoded straight into the queue, under the lock: a record is
    /// mostly values of a kilobyte or more, and encoding it apart first cost an allocation and
    /// a copy of every value per append.
    fn commit(
        &self,
        record_bytes: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut q = self.queue.lock();
        while q.queued.len() >= QUEUED_BYTES_MAX && q.failure.is_none() {
            self.queue_room.wait(&mut q);
        }
        if let Some(failure) = &q.failure {
            return Err(failed_earlier(failure));
        }
        q.queued.reserve(record_bytes);
        encode(&mut q.queued)?;
        q.tickets_issued += 1;
        let ticket = q.tickets_issued;
        loop {
            if q.completed >= ticket {
                return q.outcome(ticket);
            }
            if !q.leader {
                return self.lead(q);
            }
            self.turn_over.wait(&mut q);
        }
    }

    /// Writes every queued record as one group; the leader's own record is among them. The
    /// leader hands over after one group, which keeps groups large: a leader that went on to
    /// write what queued during its sync was measured to sync more often for no throughput.
    fn lead(&self, mut q: MutexGuard<'_, Queue>) -> Result<()> {
        q.leader = true;
        let _leadership = Leadership(self);
        let spare = std::mem::take(&mut q.spare);
        let mut group = std::mem::replace(&mut q.queued, spare);
        let records = q.tickets_issued - q.completed;
        let turn = GroupTurn::new(self, q.completed + 1, q.tickets_issued);
        let earlier_failure = q.failure.clone();
        drop(q);
        self.queue_room.notify_all();
        let result = match earlier_failure {
            Some(failure) => Err(failed_earlier(&failure)),
            None => self.write_group(&mut group, records),
        };
        let failure = result.as_ref().err().map(ToString::to_string);
        turn.complete(&mut self.queue.lock(), failure, group);
        result
    }

    fn write_group(&self, group: &mut [u8], records: u64) -> Result<()> {
        let seg = self.current();
        let at = seg.written.load(Ordering::Acquire);
        seal_group(group, seg.salt, seg.synced.load(Ordering::Acquire));
        let end = at + group.len() as u64;
        self.ensure_allocated(&seg, end)?;
        fail::fail_point!("wal-append", |_| Err(Error::Injected("wal-append")));
        seg.file.write_all_at(group, at).at(&seg.path)?;
        seg.written.store(end, Ordering::Release);
        let now_ms = self.clock.now_ms();
        let _ = seg.first_record_ms.compare_exchange(
            NO_RECORD_YET,
            now_ms,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let c = &self.counters;
        c.bytes.fetch_add(group.len() as u64, Ordering::Relaxed);
        c.group_commits.fetch_add(1, Ordering::Relaxed);
        c.records.fetch_add(records, Ordering::AcqRel);
        match self.opts.sync {
            SyncPolicy::Always => self.sync_segment(&seg),
            SyncPolicy::Periodic { writes, .. } => {
                self.nudge_syncer(writes);
                Ok(())
            }
            SyncPolicy::Never => Ok(()),
        }
    }

    /// Grows the reservation a whole `preallocate_bytes` step at a time, so that synced appends
    /// rarely change the file size (which would make fdatasync write metadata too).
    fn ensure_allocated(&self, seg: &Segment, end: u64) -> Result<()> {
        let allocated = seg.allocated.load(Ordering::Acquire);
        let step = self.opts.preallocate_bytes;
        if step == 0 || end <= allocated {
            return Ok(());
        }
        let target = end.max(allocated + step);
        fallocate(&seg.file, allocated, target - allocated).at(&seg.path)?;
        seg.allocated.store(target, Ordering::Release);
        Ok(())
    }

    fn nudge_syncer(&self, writes: u64) {
        if self.unsynced_records() >= writes {
            let _stop = self.syncer_stop.lock();
            self.syncer_wake.notify_one();
        }
    }

    fn unsynced_records(&self) -> u64 {
        let c = &self.counters;
        c.records
            .load(Ordering::Acquire)
            .saturating_sub(c.records_synced.load(Ordering::Acquire))
    }

    /// fdatasyncs `seg` up to what is written now, after the retired segment if there is one.
    fn sync_segment(&self, seg: &Segment) -> Result<()> {
        self.seal_retired()?;
        self.sync_data(seg)
    }

    /// Syncs and cuts the segment the last switch retired, if it is not sealed yet.
    fn seal_retired(&self) -> Result<()> {
        let mut retired = self.retired.lock();
        if let Some(old) = retired.as_ref() {
            self.sync_data(old)?;
            self.cut(old)?;
        }
        *retired = None;
        Ok(())
    }

    /// fdatasyncs `seg` up to what is written now; a no-op if that is already synced.
    fn sync_data(&self, seg: &Segment) -> Result<()> {
        if let Some(failure) = &self.queue.lock().failure {
            return Err(failed_earlier(failure));
        }
        // Records first: a group counted there has its bytes below `written` already.
        let records = self.counters.records.load(Ordering::Acquire);
        let upto = seg.written.load(Ordering::Acquire);
        if seg.synced.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        if let Err(e) = fdatasync(seg) {
            self.poison(&e);
            return Err(e);
        }
        seg.synced.fetch_max(upto, Ordering::AcqRel);
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .records_synced
            .fetch_max(records, Ordering::AcqRel);
        Ok(())
    }

    fn poison(&self, e: &Error) {
        let mut q = self.queue.lock();
        q.failure.get_or_insert_with(|| e.to_string());
        drop(q);
        self.queue_room.notify_all();
    }

    /// Syncs `seg` and cuts it to its last record.
    fn seal(&self, seg: &Segment) -> Result<()> {
        self.sync_segment(seg)?;
        self.cut(seg)
    }

    /// Drops the unused preallocation past `seg`'s last record; `seg` is synced already.
    fn cut(&self, seg: &Segment) -> Result<()> {
        let end = seg.written.load(Ordering::Acquire);
        if seg.allocated.load(Ordering::Acquire) > end {
            seg.file.set_len(end).at(&seg.path)?;
            seg.file.sync_all().at(&seg.path)?;
            seg.allocated.store(end, Ordering::Release);
        }
        Ok(())
    }

    /// Waits until no group is being written, then holds off the next one until the returned
    /// guard drops.
    fn take_leader_role(&self) -> Leadership<'_> {
        let mut q = self.queue.lock();
        while q.leader {
            self.turn_over.wait(&mut q);
        }
        q.leader = true;
        Leadership(self)
    }
}

impl Queue {
    fn complete(&mut self, first: u64, last: u64, failure: Option<String>, buffer: Vec<u8>) {
        self.completed = self.completed.max(last);
        if let Some(failure) = failure {
            self.failure.get_or_insert(failure);
            self.failed_from = self.failed_from.min(first);
        }
        if self.spare.capacity() == 0 && buffer.capacity() <= SPARE_BUFFER_BYTES_MAX {
            let mut buffer = buffer;
            buffer.clear();
            self.spare = buffer;
        }
    }

    fn outcome(&self, ticket: u64) -> Result<()> {
        match &self.failure {
            Some(failure) if ticket >= self.failed_from => Err(failed_earlier(failure)),
            _ => Ok(()),
        }
    }
}

fn failed_earlier(failure: &str) -> Error {
    Error::BackgroundFailed(format!("WAL write or sync failed: {failure}"))
}

/// Tickets `first..=last` being written. If the leader panics before completing them, dropping
/// this fails them instead of leaving their appenders waiting forever.
struct GroupTurn<'a> {
    inner: &'a Inner,
    first: u64,
    last: u64,
    completed: bool,
}

impl<'a> GroupTurn<'a> {
    fn new(inner: &'a Inner, first: u64, last: u64) -> Self {
        GroupTurn {
            inner,
            first,
            last,
            completed: false,
        }
    }

    fn complete(mut self, q: &mut Queue, failure: Option<String>, buffer: Vec<u8>) {
        self.completed = true;
        q.complete(self.first, self.last, failure, buffer);
    }
}

impl Drop for GroupTurn<'_> {
    fn drop(&mut self) {
        if !self.completed {
            let failure = "a WAL writer panicked mid-write".to_string();
            let mut q = self.inner.queue.lock();
            q.complete(self.first, self.last, Some(failure), Vec::new());
        }
    }
}

/// The leader role; dropping it (also when unwinding) lets the next appender lead.
struct Leadership<'a>(&'a Inner);

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        self.0.queue.lock().leader = false;
        self.0.turn_over.notify_all();
        self.0.queue_room.notify_all();
    }
}

impl Segment {
    fn create(dir: &Path, id: u64, opts: &WalOptions) -> Result<Segment> {
        if opts.recycle_segments_max > 0 {
            if let Some(retired) = list_recyclable(dir)?.into_iter().next() {
                return Self::recycle(dir, id, &retired);
            }
        }
        Self::create_new(dir, id, opts.preallocate_bytes)
    }

    fn create_new(dir: &Path, id: u64, preallocate_bytes: u64) -> Result<Segment> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        let salt = rand::random();
        let initialized =
            Self::initialize(&file, &path, id, salt, preallocate_bytes).and_then(|allocated| {
                sync_dir(dir)?;
                Ok(allocated)
            });
        let allocated = match initialized {
            Ok(allocated) => allocated,
            Err(e) => {
                // A half-made segment would look like the last one to the next recovery.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        Ok(Segment::opened(id, path, file, salt, allocated))
    }

    /// Makes the retired file `from` segment `id`. The new header is synced before the rename,
    /// so the name never shows a header of another segment, and the file keeps its length: the
    /// old records behind the header read as a torn tail until the first cut.
    fn recycle(dir: &Path, id: u64, from: &Path) -> Result<Segment> {
        let path = segment_path(dir, id);
        if path.symlink_metadata().is_ok() {
            // A rename would replace it; `create_new` refuses the same way.
            let exists = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
            return Err(Error::io(&path, exists));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(from)
            .at(from)?;
        let salt = rand::random();
        let header = SegmentHeader {
            segment_id: id,
            salt,
        };
        file.write_all_at(&header.encode(), 0).at(from)?;
        file.sync_data().at(from)?;
        fail::fail_point!("wal-recycle", |_| Err(Error::Injected("wal-recycle")));
        std::fs::rename(from, &path).at(from)?;
        sync_dir(dir)?;
        let allocated = file.metadata().at(&path)?.len();
        Ok(Segment::opened(id, path, file, salt, allocated))
    }

    fn opened(id: u64, path: PathBuf, file: File, salt: u64, allocated: u64) -> Segment {
        let header_end = HEADER_BYTES as u64;
        Segment {
            id,
            path,
            file,
            salt,
            written: AtomicU64::new(header_end),
            synced: AtomicU64::new(header_end),
            allocated: AtomicU64::new(allocated.max(header_end)),
            first_record_ms: AtomicU64::new(NO_RECORD_YET),
        }
    }

    /// Reserves space, writes the header and syncs; returns the bytes reserved.
    fn initialize(
        file: &File,
        path: &Path,
        id: u64,
        salt: u64,
        preallocate_bytes: u64,
    ) -> Result<u64> {
        let header_end = HEADER_BYTES as u64;
        let allocated = if preallocate_bytes > 0 {
            let len = preallocate_bytes.max(header_end);
            fallocate(file, 0, len).at(path)?;
            len
        } else {
            header_end
        };
        let header = SegmentHeader {
            segment_id: id,
            salt,
        };
        file.write_all_at(&header.encode(), 0).at(path)?;
        file.sync_all().at(path)?;
        Ok(allocated)
    }
}

fn fdatasync(seg: &Segment) -> Result<()> {
    fail::fail_point!("wal-fsync", |_| Err(Error::Injected("wal-fsync")));
    seg.file.sync_data().at(&seg.path)
}

fn fallocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let too_large = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let offset = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_large())?;
    // SAFETY: the descriptor stays open for the call (`file` is borrowed); no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, len) };
    match rc {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

fn spawn_syncer(inner: &Arc<Inner>, interval: Duration, writes: u64) -> Result<JoinHandle<()>> {
    let inner = Arc::clone(inner);
    let dir = inner.dir.clone();
    std::thread::Builder::new()
        .name("wal-syncer".into())
        .spawn(move || run_syncer(&inner, interval, writes))
        .at(&dir)
}

/// Syncs every `interval`, or as soon as `writes` records are unsynced. Stops at the first
/// failure: the WAL is poisoned then, and retrying an fsync cannot be trusted.
fn run_syncer(inner: &Inner, interval: Duration, writes: u64) {
    loop {
        let deadline = Instant::now() + interval;
        {
            let mut stop = inner.syncer_stop.lock();
            while !*stop && inner.unsynced_records() < writes && Instant::now() < deadline {
                inner.syncer_wake.wait_until(&mut stop, deadline);
            }
            if *stop {
                return;
            }
        }
        if let Err(e) = inner.sync_segment(&inner.current()) {
            tracing::error!(error = %e, "periodic WAL sync failed; the WAL refuses writes from now on");
            return;
        }
    }
}
