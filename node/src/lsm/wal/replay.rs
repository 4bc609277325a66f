//! Reading a segment back after a restart, and repairing a torn tail.
//!
//! The rule that separates a torn tail from corruption: every record carries the offset up to
//! which the segment had been fdatasynced when the record was written. Bytes past that offset
//! were in flight and may reach the disk in any order (the OS writes pages back as it likes, a
//! group write can tear in its middle), so damage there is a torn tail, even with checksummed
//! records after it. Damage below the synced offset of any later valid record had been durable,
//! so it is corruption.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::format::{
    decode_mutations, last_seq_of, record_checksum, RecordHead, SegmentHeader, HEADER_BYTES,
    RECORD_BODY_BYTES_MAX, RECORD_BODY_BYTES_MIN, RECORD_HEAD_BYTES, RECORD_PREFIX_BYTES,
};
use super::segment_id_of;
use crate::lsm::error::IoContext;
use crate::lsm::{Error, Mutation, Result};

/// What replaying one segment found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentReplay {
    /// Records passed to the visitor.
    pub records: u64,
    /// Highest sequence number any replayed mutation uses (a batch at `seq` with `n` mutations
    /// uses `seq..seq + n`), so the next free one is `last_seq + 1`. Records need not be in
    /// sequence order when appenders race.
    pub last_seq: Option<u64>,
    /// Set when a torn tail was cut off: the file now ends at this offset. `Some(0)` means the
    /// segment's creation never completed and it was re-initialized empty.
    pub truncated_at: Option<u64>,
}

/// Replays one segment in order, calling `visit(seq, mutations)` per record.
///
/// `is_last` names a segment that may have been in flight when the process stopped: the one
/// it was writing, or the one a switch had retired but not yet synced. There, a torn tail is
/// cut off (truncated and synced, so a later replay, when the segment is no longer last, sees a
/// clean end). Everything else that fails to verify is [`Error::Corruption`] with the file and
/// offset; nothing is skipped.
pub fn replay_segment(
    path: &Path,
    is_last: bool,
    mut visit: impl FnMut(u64, Vec<Mutation>) -> Result<()>,
) -> Result<SegmentReplay> {
    let mut reader = SegmentReader::open(path)?;
    let Some(header) = read_header(&mut reader, is_last)? else {
        reinitialize(path)?;
        return Ok(SegmentReplay {
            truncated_at: Some(0),
            ..SegmentReplay::default()
        });
    };
    let mut out = SegmentReplay::default();
    let mut at = HEADER_BYTES as u64;
    loop {
        if reader.next_nonzero(at)?.is_none() {
            return Ok(out);
        }
        match parse_record(&mut reader, at, header.salt)? {
            Parsed::Valid(rec) => {
                out.records += 1;
                let last = last_seq_of(rec.seq, rec.mutations.len());
                out.last_seq = out.last_seq.max(Some(last));
                at = rec.end;
                visit(rec.seq, rec.mutations)?;
            }
            Parsed::Invalid(damage) => {
                cut_torn_tail(&mut reader, at, &damage, is_last, header.salt)?;
                out.truncated_at = Some(at);
                return Ok(out);
            }
        }
    }
}

/// Truncates at `at` if the damage there can only be a torn tail, else reports corruption.
fn cut_torn_tail(
    reader: &mut SegmentReader,
    at: u64,
    damage: &Damage,
    is_last: bool,
    salt: u64,
) -> Result<()> {
    let path = reader.path.clone();
    if !is_last {
        let reason = format!("{damage} (not the last segment, so it cannot be a torn tail)");
        return Err(Error::corruption(path, at, reason));
    }
    let later = scan_after_damage(reader, at, salt)?;
    if let Some(proof) = later.synced_past_damage {
        let reason = format!(
            "{damage}; the valid record at offset {} was written after the segment was synced \
             up to offset {}, so this is not a torn tail",
            proof.at, proof.synced_offset
        );
        return Err(Error::corruption(path, at, reason));
    }
    tracing::warn!(
        path = %path.display(),
        offset = at,
        reason = %damage,
        bytes_cut = reader.len - at,
        unsynced_records_dropped = later.records,
        "cutting the torn tail of the WAL"
    );
    let file = OpenOptions::new().write(true).open(&path).at(&path)?;
    file.set_len(at).at(&path)?;
    file.sync_all().at(&path)
}

struct SyncedPastDamage {
    at: u64,
    synced_offset: u64,
}

struct AfterDamage {
    /// Valid records found after the damage; all unsynced when written, so dropped with it.
    records: u64,
    synced_past_damage: Option<SyncedPastDamage>,
}

/// Looks at every offset after `damaged_at` for a record whose checksum verifies. Zero runs (the
/// preallocated region) are skipped whole: a record's length field is never zero.
fn scan_after_damage(
    reader: &mut SegmentReader,
    damaged_at: u64,
    salt: u64,
) -> Result<AfterDamage> {
    let mut out = AfterDamage {
        records: 0,
        synced_past_damage: None,
    };
    let mut at = damaged_at + 1;
    while let Some(nonzero) = reader.next_nonzero(at)? {
        let candidate = at.max(nonzero.saturating_sub(3));
        match parse_record(reader, candidate, salt)? {
            Parsed::Valid(rec) if rec.synced_offset > damaged_at => {
                out.synced_past_damage = Some(SyncedPastDamage {
                    at: candidate,
                    synced_offset: rec.synced_offset,
                });
                return Ok(out);
            }
            Parsed::Valid(rec) => {
                out.records += 1;
                at = rec.end;
            }
            Parsed::Invalid(_) => at = candidate + 1,
        }
    }
    Ok(out)
}

/// The header, or `None` for a last segment that is all zeros: its creation was interrupted
/// before the header was synced, so no record was ever acknowledged in it.
fn read_header(reader: &mut SegmentReader, is_last: bool) -> Result<Option<SegmentHeader>> {
    let decoded = match reader.get(0, HEADER_BYTES)? {
        Some(bytes) => SegmentHeader::decode(bytes),
        None => Err(format!(
            "file is {} bytes, shorter than a segment header",
            reader.len
        )),
    };
    let header = match decoded {
        Ok(h) => h,
        Err(_) if is_last && reader.next_nonzero(0)?.is_none() => return Ok(None),
        Err(reason) => return Err(Error::corruption(&reader.path, 0, reason)),
    };
    match segment_id_of(&reader.path) {
        Some(id) if id != header.segment_id => {
            let reason = format!(
                "header names segment {}, the file name {id}",
                header.segment_id
            );
            Err(Error::corruption(&reader.path, 16, reason))
        }
        _ => Ok(Some(header)),
    }
}

/// Gives an interrupted creation a valid header so that it reads as empty from now on, also
/// once it is no longer the last segment.
fn reinitialize(path: &Path) -> Result<()> {
    let id = segment_id_of(path).ok_or_else(|| {
        Error::corruption(
            path,
            0,
            "all-zero segment whose file name carries no segment id",
        )
    })?;
    tracing::warn!(path = %path.display(), "re-initializing a WAL segment whose creation was interrupted");
    let header = SegmentHeader {
        segment_id: id,
        salt: rand::random(),
    };
    let file = OpenOptions::new().write(true).open(path).at(path)?;
    file.set_len(0).at(path)?;
    file.write_all_at(&header.encode(), 0).at(path)?;
    file.sync_all().at(path)
}

struct Record {
    seq: u64,
    synced_offset: u64,
    mutations: Vec<Mutation>,
    end: u64,
}

enum Parsed {
    Valid(Record),
    /// Framing or checksum failure: what a torn write leaves.
    Invalid(Damage),
}

/// Why the bytes at an offset are not a record. A value, not a message: the scan after damage
/// rejects nearly every offset of what follows (all of a recycled segment's old records), and
/// formatting a message per offset made that scan take 3 s per 64 MiB.
#[derive(Debug)]
enum Damage {
    HeadPastEnd,
    LengthOutOfBounds(usize),
    ImpossibleSyncedOffset(u64),
    RecordPastEnd(usize),
    ChecksumMismatch,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::HeadPastEnd => write!(f, "record header runs past the end of the file"),
            Damage::LengthOutOfBounds(len) => write!(f, "record length {len} is out of bounds"),
            Damage::ImpossibleSyncedOffset(at) => {
                write!(f, "synced offset {at} is impossible here")
            }
            Damage::RecordPastEnd(len) => {
                write!(f, "record of {len} bytes runs past the end of the file")
            }
            Damage::ChecksumMismatch => write!(f, "record checksum mismatch"),
        }
    }
}

/// Parses the record at `at`. Cheap plausibility checks come before the checksum so that the
/// scan after damage hashes almost nothing. A record whose checksum verifies but whose body does
/// not decode was written that way or rotted inside: never a tear, so an error.
fn parse_record(reader: &mut SegmentReader, at: u64, salt: u64) -> Result<Parsed> {
    let invalid = |damage| Ok(Parsed::Invalid(damage));
    let Some(head) = reader
        .get(at, RECORD_HEAD_BYTES)?
        .and_then(RecordHead::decode)
    else {
        return invalid(Damage::HeadPastEnd);
    };
    if !(RECORD_BODY_BYTES_MIN..=RECORD_BODY_BYTES_MAX).contains(&head.body_len) {
        return invalid(Damage::LengthOutOfBounds(head.body_len));
    }
    if head.synced_offset < HEADER_BYTES as u64 || head.synced_offset > at {
        return invalid(Damage::ImpossibleSyncedOffset(head.synced_offset));
    }
    let Some(rec) = reader.get(at, head.record_len())? else {
        return invalid(Damage::RecordPastEnd(head.record_len()));
    };
    let (length_field, body) = (&rec[..4], &rec[RECORD_PREFIX_BYTES..]);
    if record_checksum(salt, length_field, body) != head.checksum {
        return invalid(Damage::ChecksumMismatch);
    }
    let body = Bytes::copy_from_slice(body);
    let mutations = decode_mutations(&body).map_err(|reason| {
        let reason = format!("record checksum verifies but its body does not decode: {reason}");
        Error::corruption(&reader.path, at, reason)
    })?;
    Ok(Parsed::Valid(Record {
        seq: head.seq,
        synced_offset: head.synced_offset,
        mutations,
        end: at + head.record_len() as u64,
    }))
}

/// Bounded-memory random access to a segment: a window re-read on demand, never the whole
/// file (segments reach a gigabyte).
struct SegmentReader {
    file: File,
    path: std::path::PathBuf,
    len: u64,
    window: Vec<u8>,
    window_at: u64,
}

const READ_CHUNK_BYTES: usize = 1 << 20;

impl SegmentReader {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        Ok(SegmentReader {
            file,
            path: path.to_path_buf(),
            len,
            window: Vec::new(),
            window_at: 0,
        })
    }

    /// Bytes `at..at + n`, or `None` if they run past the end of the file.
    fn get(&mut self, at: u64, n: usize) -> Result<Option<&[u8]>> {
        let Some(end) = at.checked_add(n as u64).filter(|&end| end <= self.len) else {
            return Ok(None);
        };
        if at < self.window_at || end > self.window_end() {
            self.load(at, n)?;
        }
        let start = (at - self.window_at) as usize;
        Ok(Some(&self.window[start..start + n]))
    }

    /// Offset of the first non-zero byte at or after `from`.
    fn next_nonzero(&mut self, from: u64) -> Result<Option<u64>> {
        let mut at = from;
        while at < self.len {
            if at < self.window_at || at >= self.window_end() {
                self.load(at, 1)?;
            }
            let buffered = &self.window[(at - self.window_at) as usize..];
            if let Some(i) = buffered.iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            at += buffered.len() as u64;
        }
        Ok(None)
    }

    fn window_end(&self) -> u64 {
        self.window_at + self.window.len() as u64
    }

    /// Reads at least `n` bytes from `at` (a whole chunk where the file has it).
    fn load(&mut self, at: u64, n: usize) -> Result<()> {
        let want = n.max(READ_CHUNK_BYTES).min((self.len - at) as usize);
        self.window.resize(want, 0);
        self.file
            .read_exact_at(&mut self.window, at)
            .at(&self.path)?;
        self.window_at = at;
        Ok(())
    }
}
