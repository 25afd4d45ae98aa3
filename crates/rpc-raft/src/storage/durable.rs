//! [`DurableStorage`]: a crash-safe [`Storage`] on a [`FileSystem`].
//!
//! Layout of the directory:
//!
//! * `wal-<seq>.log` segments: a sequence of records `len:u32 crc32:u32 payload`, where
//!   the payload is `1 entry`, `2 commit:u64` or `3 base index:u64 term:u64` (the log
//!   restarts after a snapshot install). Entries are replayed in order and a later
//!   entry at an existing index truncates the log there, so conflicts never rewrite a
//!   file. A new segment starts when the active one exceeds `segment_bytes`.
//! * `hardstate`: term, vote and commit, replaced atomically (temp file, fsync,
//!   rename, directory fsync) whenever term or vote changes. Commit-only changes go
//!   into the WAL as `commit` records, riding on the next fsync (losing one is safe).
//! * `snapshot`: the latest snapshot, replaced atomically the same way.
//!
//! Every [`Storage::persist`] call issues a single WAL fsync for all its records
//! (group commit) before returning, so nothing is acknowledged before it is durable.
//! Recovery truncates a torn tail (an incomplete last record, or zero fill) of the
//! last segment and refuses any other damage with [`StorageError::Corrupt`].
//! All entries since the snapshot are also kept in memory; the snapshot's data is not (the
//! application holds the state it was taken from), and is read from its file when asked for.

use crate::codec::{Reader, Writer};
use crate::crc32::crc32;
use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};
use crate::storage::{FileSystem, MemStorage, Storage, StorageError};

const HS_MAGIC: &[u8; 4] = b"RHS1";
const SNAP_MAGIC: &[u8; 4] = b"RSN1";
const REC_ENTRY: u8 = 1;
const REC_COMMIT: u8 = 2;
const REC_BASE: u8 = 3;

/// Tuning of [`DurableStorage`].
#[derive(Clone, Debug)]
pub struct DurableOptions {
    /// Call fsync (turn off only for benchmarks: after a crash acknowledged data may be lost, or
    /// the directory refused as corrupt).
    pub sync: bool,
    /// Size after which a new WAL segment is started.
    pub segment_bytes: u64,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions { sync: true, segment_bytes: 64 << 20 }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    max_index: u64,
    size: u64,
}

/// A [`Storage`] persisted in a directory of a [`FileSystem`].
#[derive(Debug)]
pub struct DurableStorage<F: FileSystem> {
    fs: F,
    dir: String,
    opts: DurableOptions,
    /// What is on disk, as it reads back: every read is served from here, and it is updated
    /// only after the disk write it mirrors succeeded.
    mem: MemStorage,
    /// Term and vote as last written to the `hardstate` file.
    file_hs: HardState,
    segments: Vec<Segment>,
}

fn seg_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    u64::from_str_radix(hex, 16).ok()
}

fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let c = crc32(&body);
    body.extend_from_slice(&c.to_le_bytes());
    body
}

/// Splits `body || crc32(body)` and checks the checksum.
fn check_crc<'a>(path: &str, data: &'a [u8]) -> Result<&'a [u8], StorageError> {
    if data.len() < 4 {
        return Err(StorageError::corrupt(path, 0, "file too short"));
    }
    let (body, c) = data.split_at(data.len() - 4);
    if crc32(body).to_le_bytes() != c {
        return Err(StorageError::corrupt(path, 0, "checksum mismatch"));
    }
    Ok(body)
}

enum Record {
    Entry(Entry),
    Commit(u64),
    Base(u64, u64),
}

impl<F: FileSystem> DurableStorage<F> {
    fn path(&self, name: &str) -> String {
        format!("{}/{}", self.dir, name)
    }

    fn io<T>(&self, op: &'static str, name: &str, r: std::io::Result<T>) -> Result<T, StorageError> {
        r.map_err(|e| StorageError::io(op, &self.path(name), e))
    }

    /// Opens (recovering) the storage in `dir`, bootstrapping it with `conf` if it is
    /// brand new. Pass an empty `conf` for a node that will join an existing cluster.
    pub fn open(fs: F, dir: &str, opts: DurableOptions, conf: ConfState) -> Result<Self, StorageError> {
        let mut s = DurableStorage {
            fs,
            dir: dir.trim_end_matches('/').to_string(),
            opts,
            mem: MemStorage::default(),
            file_hs: HardState::default(),
            segments: Vec::new(),
        };
        let r = s.fs.create_dir_all(&s.dir);
        s.io("create dir", "", r)?;
        let r = s.fs.list(&s.dir);
        let names = s.io("list", "", r)?;
        let fresh = !names.iter().any(|n| n == "snapshot");
        if fresh {
            s.mem.snapshot.meta.conf = conf;
            let snap = s.mem.snapshot.clone();
            s.write_atomic("snapshot", &encode_snapshot(&snap))?;
        } else {
            s.load_snapshot()?;
        }
        if names.iter().any(|n| n == "hardstate") {
            s.load_hard_state()?;
        }
        let mut seqs: Vec<u64> = names.iter().filter_map(|n| parse_seg_name(n)).collect();
        seqs.sort_unstable();
        let reset = s.replay(&seqs)?;
        let next = seqs.last().map_or(1, |l| l + 1);
        s.start_segment(next)?;
        if reset {
            // Record the discard, or entries appended from now on would not follow the
            // stale ones still in older segments.
            let m = s.mem.snapshot.meta.clone();
            let mut p = vec![REC_BASE];
            Writer(&mut p).u64(m.index);
            Writer(&mut p).u64(m.term);
            let mut buf = Vec::new();
            frame(&mut buf, &p);
            s.append_records(&buf, m.index)?;
            if s.opts.sync {
                let (path, seq) = s.active();
                let r = s.fs.sync(&path);
                s.io("sync", &seg_name(seq), r)?;
            }
        }
        Ok(s)
    }

    fn load_snapshot(&mut self) -> Result<(), StorageError> {
        let snapshot = self.read_snapshot()?;
        self.mem.snapshot.meta = snapshot.meta;
        Ok(())
    }

    /// The latest snapshot, read from its file.
    fn read_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let path = self.path("snapshot");
        let r = self.fs.read(&path);
        let data = self.io("read", "snapshot", r)?;
        let body = check_crc(&path, &data)?;
        let bad = |e| StorageError::corrupt(&path, 0, format!("bad snapshot: {e}"));
        if body.len() < 4 || &body[..4] != SNAP_MAGIC {
            return Err(StorageError::corrupt(&path, 0, "bad snapshot magic"));
        }
        let mut r = Reader::new(&body[4..]);
        let meta = r.snap_meta().map_err(bad)?;
        let data = r.bytes().map_err(bad)?;
        Ok(Snapshot { meta, data })
    }

    fn load_hard_state(&mut self) -> Result<(), StorageError> {
        let path = self.path("hardstate");
        let r = self.fs.read(&path);
        let data = self.io("read", "hardstate", r)?;
        let body = check_crc(&path, &data)?;
        if body.len() != 28 || &body[..4] != HS_MAGIC {
            return Err(StorageError::corrupt(&path, 0, "bad hard state"));
        }
        let mut r = Reader::new(&body[4..]);
        let bad = |e| StorageError::corrupt(&path, 4, format!("bad hard state: {e}"));
        let term = r.u64().map_err(bad)?;
        let vote = r.u64().map_err(bad)?;
        let commit = r.u64().map_err(bad)?;
        self.mem.hard_state = HardState { term, vote: (vote != 0).then_some(vote), commit };
        self.file_hs = self.mem.hard_state.clone();
        Ok(())
    }

    /// Replays the WAL; returns whether the log had to be discarded because it does
    /// not continue the snapshot.
    fn replay(&mut self, seqs: &[u64]) -> Result<bool, StorageError> {
        let mut log: Vec<Entry> = Vec::new();
        // Position just before log[0], and its term when known (a base record).
        let mut start = 0u64;
        let mut base: Option<(u64, u64)> = None;
        // Whether `start` was guessed from the first entry found (older segments were
        // removed by compaction) rather than known from a base record or entry 1.
        let mut inferred = false;
        let mut commit = 0;
        for (n, &seq) in seqs.iter().enumerate() {
            let name = seg_name(seq);
            let path = self.path(&name);
            let r = self.fs.read(&path);
            let data = self.io("read", &name, r)?;
            let last_segment = n + 1 == seqs.len();
            let mut off = 0usize;
            let mut max_index = 0;
            while off < data.len() {
                let rest = &data[off..];
                let zero_fill = rest.iter().all(|&b| b == 0);
                let incomplete = rest.len() < 8 || {
                    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    rest.len() - 8 < len
                };
                let torn = zero_fill || incomplete;
                if torn {
                    if !last_segment || valid_record_after(&data, off) {
                        return Err(StorageError::corrupt(&path, off as u64, "truncated record in a sealed segment"));
                    }
                    // A torn tail was never acknowledged: drop it.
                    let r = self.fs.truncate(&path, off as u64);
                    self.io("truncate", &name, r)?;
                    if self.opts.sync {
                        let r = self.fs.sync(&path);
                        self.io("sync", &name, r)?;
                    }
                    break;
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
                let payload = &rest[8..8 + len];
                if crc32(payload) != crc {
                    return Err(StorageError::corrupt(&path, off as u64, "record checksum mismatch"));
                }
                let rec = decode_record(payload).map_err(|e| StorageError::corrupt(&path, off as u64, e))?;
                match rec {
                    Record::Entry(e) => {
                        if e.index == 0 {
                            return Err(StorageError::corrupt(&path, off as u64, "entry with index 0"));
                        }
                        let next = start + 1 + log.len() as u64;
                        let unanchored = base.is_none() && (inferred || log.is_empty() && start == 0);
                        if unanchored && (log.is_empty() || e.index <= start) {
                            // The first entry found, or, when older segments were compacted
                            // away (all they held is covered by the snapshot), an overwrite
                            // reaching back into them: the log restarts at this entry.
                            log.clear();
                            start = e.index - 1;
                            inferred = start > 0;
                        } else if e.index <= start || e.index > next {
                            return Err(StorageError::corrupt(
                                &path,
                                off as u64,
                                format!("entry {} does not continue the log (next {next})", e.index),
                            ));
                        }
                        log.truncate((e.index - start - 1) as usize);
                        max_index = max_index.max(e.index);
                        log.push(e);
                    }
                    Record::Commit(c) => commit = commit.max(c),
                    Record::Base(i, t) => {
                        inferred = false;
                        log.clear();
                        start = i;
                        base = Some((i, t));
                        max_index = max_index.max(i);
                    }
                }
                off += 8 + len;
            }
            self.segments.push(Segment { seq, max_index, size: off as u64 });
        }
        // Reconcile with the snapshot: keep what follows it only if the log provably
        // continues it (it holds the snapshot's entry, or starts right after it).
        let (si, st) = (self.mem.snapshot.meta.index, self.mem.snapshot.meta.term);
        if inferred && start > si {
            // Compaction only removes segments the snapshot covers: a log resuming past the
            // snapshot means a segment file went missing.
            return Err(StorageError::corrupt(
                &self.dir,
                0,
                format!("WAL segment missing: the log resumes at entry {} but the snapshot ends at {si}", start + 1),
            ));
        }
        let term_at = |i: u64| -> Option<u64> {
            if base == Some((i, st)) && i == start {
                return Some(st);
            }
            if i > start && i <= start + log.len() as u64 {
                return Some(log[(i - start - 1) as usize].term);
            }
            None
        };
        let continues = si == 0 && start == 0 || term_at(si) == Some(st) || (start == si && !log.is_empty());
        let reset = !continues;
        if continues {
            log.retain(|e| e.index > si);
        } else {
            log.clear();
        }
        if let Some(f) = log.first() {
            if f.index != si + 1 {
                return Err(StorageError::corrupt(
                    &self.dir,
                    0,
                    format!("log starts at {} after snapshot {si}", f.index),
                ));
            }
        }
        self.mem.entries = log;
        let last = self.last_index();
        self.mem.hard_state.commit = self.mem.hard_state.commit.max(commit).max(si).min(last);
        Ok(reset)
    }

    fn start_segment(&mut self, seq: u64) -> Result<(), StorageError> {
        let name = seg_name(seq);
        let path = self.path(&name);
        let r = self.fs.write_new(&path, &[]);
        self.io("create", &name, r)?;
        if self.opts.sync {
            let r = self.fs.sync(&path);
            self.io("sync", &name, r)?;
            let r = self.fs.sync_dir(&self.dir);
            self.io("sync dir", "", r)?;
        }
        self.segments.push(Segment { seq, max_index: 0, size: 0 });
        Ok(())
    }

    fn write_atomic(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let tmp = self.path(&format!("{name}.tmp"));
        let dst = self.path(name);
        let r = self.fs.write_new(&tmp, data);
        self.io("write", name, r)?;
        if self.opts.sync {
            let r = self.fs.sync(&tmp);
            self.io("sync", name, r)?;
        }
        let r = self.fs.rename(&tmp, &dst);
        self.io("rename", name, r)?;
        if self.opts.sync {
            let r = self.fs.sync_dir(&self.dir);
            self.io("sync dir", "", r)?;
        }
        Ok(())
    }

    fn active(&self) -> (String, u64) {
        let seg = self.segments.last().map_or(0, |s| s.seq);
        (self.path(&seg_name(seg)), seg)
    }

    fn append_records(&mut self, buf: &[u8], max_index: u64) -> Result<(), StorageError> {
        let (path, seq) = self.active();
        let r = self.fs.append(&path, buf);
        self.io("append", &seg_name(seq), r)?;
        if let Some(s) = self.segments.last_mut() {
            s.size += buf.len() as u64;
            s.max_index = s.max_index.max(max_index);
        }
        Ok(())
    }

    /// Number of fsync-able WAL segments on disk (for tests and monitoring).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The underlying file system.
    pub fn fs(&self) -> &F {
        &self.fs
    }
}

fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut body = SNAP_MAGIC.to_vec();
    let mut w = Writer(&mut body);
    w.snap_meta(&s.meta);
    w.bytes(&s.data);
    with_crc(body)
}

/// Whether a well-formed record starts anywhere after `off`: if so the damage at
/// `off` is not a torn tail (which only ever ends a file) but corruption.
fn valid_record_after(data: &[u8], off: usize) -> bool {
    (off + 1..data.len().saturating_sub(8)).any(|p| {
        let len = u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]) as usize;
        let crc = u32::from_le_bytes([data[p + 4], data[p + 5], data[p + 6], data[p + 7]]);
        len > 0
            && p + 8 + len <= data.len()
            && crc32(&data[p + 8..p + 8 + len]) == crc
            && decode_record(&data[p + 8..p + 8 + len]).is_ok()
    })
}

fn decode_record(p: &[u8]) -> Result<Record, String> {
    let mut r = Reader::new(p);
    let rec = match r.u8().map_err(|e| e.to_string())? {
        REC_ENTRY => Record::Entry(r.entry().map_err(|e| e.to_string())?),
        REC_COMMIT => Record::Commit(r.u64().map_err(|e| e.to_string())?),
        REC_BASE => Record::Base(r.u64().map_err(|e| e.to_string())?, r.u64().map_err(|e| e.to_string())?),
        t => return Err(format!("unknown record type {t}")),
    };
    if r.remaining() != 0 {
        return Err("trailing bytes in record".into());
    }
    Ok(rec)
}

impl<F: FileSystem> Storage for DurableStorage<F> {
    fn hard_state(&self) -> HardState {
        self.mem.hard_state()
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.mem.entries(lo, hi, max_bytes)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        self.mem.term(index)
    }

    fn first_index(&self) -> u64 {
        self.mem.first_index()
    }

    fn last_index(&self) -> u64 {
        self.mem.last_index()
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.mem.snapshot_meta()
    }

    fn snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.read_snapshot()
    }

    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        self.mem.check(snapshot, entries)?;
        let mut buf = Vec::new();
        let mut max_index = 0;
        if let Some(s) = snapshot {
            // The snapshot file first: a crash before the base record leaves the old
            // log, which recovery discards because it does not continue the snapshot.
            self.write_atomic("snapshot", &encode_snapshot(s))?;
            let mut p = vec![REC_BASE];
            Writer(&mut p).u64(s.meta.index);
            Writer(&mut p).u64(s.meta.term);
            frame(&mut buf, &p);
            max_index = s.meta.index;
        }
        if let Some(last) = entries.last() {
            let mut p = Vec::with_capacity(64);
            for e in entries {
                p.clear();
                p.push(REC_ENTRY);
                Writer(&mut p).entry(e);
                frame(&mut buf, &p);
            }
            max_index = max_index.max(last.index);
        }
        if let Some(hs) = hard_state {
            if hs.commit != self.mem.hard_state.commit {
                let mut p = vec![REC_COMMIT];
                Writer(&mut p).u64(hs.commit);
                frame(&mut buf, &p);
            }
        }
        if !buf.is_empty() {
            self.append_records(&buf, max_index)?;
        }
        if self.opts.sync && (snapshot.is_some() || !entries.is_empty()) {
            let (path, seq) = self.active();
            let r = self.fs.sync(&path);
            self.io("sync", &seg_name(seq), r)?;
        }
        if let Some(hs) = hard_state {
            if hs.term != self.file_hs.term || hs.vote != self.file_hs.vote {
                let mut body = HS_MAGIC.to_vec();
                let mut w = Writer(&mut body);
                w.u64(hs.term);
                w.u64(hs.vote.unwrap_or(0));
                w.u64(hs.commit);
                self.write_atomic("hardstate", &with_crc(body))?;
                self.file_hs = hs.clone();
            }
        }
        let meta_only = snapshot.map(|s| Snapshot { meta: s.meta.clone(), data: Vec::new() });
        self.mem.persist(hard_state, meta_only.as_ref(), entries)?;
        let size = self.segments.last().map_or(0, |s| s.size);
        if size >= self.opts.segment_bytes {
            if self.opts.sync {
                // Unsynced commit records must not be torn inside a sealed segment.
                let (path, seq) = self.active();
                let r = self.fs.sync(&path);
                self.io("sync", &seg_name(seq), r)?;
            }
            let next = self.segments.last().map_or(1, |s| s.seq + 1);
            self.start_segment(next)?;
        }
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.mem.check_compact(&snapshot)?;
        let idx = snapshot.meta.index;
        self.write_atomic("snapshot", &encode_snapshot(&snapshot))?;
        self.mem.compact(Snapshot { meta: snapshot.meta, data: Vec::new() })?;
        // The oldest sealed segments wholly covered by the snapshot are no longer needed. Only a
        // prefix: a later segment can hold an overwrite of entries in an earlier one that must
        // stay, and replay needs that overwrite to discard them.
        let active = self.segments.len().saturating_sub(1);
        let covered = self.segments[..active].iter().take_while(|seg| seg.max_index <= idx).count();
        let gone: Vec<Segment> = self.segments.drain(..covered).collect();
        for seg in gone {
            let name = seg_name(seg.seq);
            let path = self.path(&name);
            let r = self.fs.remove(&path);
            self.io("remove", &name, r)?;
        }
        Ok(())
    }
}
