//! Durable storage under injected crashes: a scripted workload is cut at every write
//! and fsync point of the fault-injecting file system, power is lost (unsynced data
//! and names vanish, torn tails appear), and recovery must return exactly the
//! acknowledged state or that state plus a prefix of the interrupted write.

use rpc_raft::rng::Rng;
use rpc_raft::storage::{DurableOptions, DurableStorage, FaultFs, FileSystem, MemStorage, Storage};
use rpc_raft::{ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta, StorageError};

const DIR: &str = "data/raft";

#[derive(Clone, Debug)]
enum Op {
    Persist { hs: Option<HardState>, snap: Option<Snapshot>, entries: Vec<Entry> },
    Compact(Snapshot),
}

fn conf() -> ConfState {
    ConfState::with_voters([1, 2, 3])
}

fn opts() -> DurableOptions {
    DurableOptions { sync: true, segment_bytes: 300 }
}

fn entry(index: u64, term: u64, rng: &mut Rng) -> Entry {
    let len = rng.range(0, 40) as usize;
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>().into(),
    }
}

/// A workload driven by a reference model so every operation is legal.
fn workload(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut model = MemStorage::new_with_conf(conf());
    let mut hs = HardState::default();
    let mut ops = Vec::new();
    while ops.len() < n {
        let last = model.last_index();
        let si = model.snapshot_meta().index;
        let op = match rng.range(0, 10) {
            0..=3 => {
                let k = rng.range(1, 6);
                let entries = (last + 1..=last + k).map(|i| entry(i, hs.term.max(1), &mut rng)).collect();
                hs.term = hs.term.max(1);
                Op::Persist { hs: Some(hs.clone()), snap: None, entries }
            }
            4 if last > hs.commit => {
                // Conflict: overwrite an uncommitted suffix with a newer term.
                hs.term += 1;
                hs.vote = Some(rng.range(1, 4));
                let j = rng.range(hs.commit.max(si) + 1, last + 1);
                let entries = (j..j + rng.range(1, 4)).map(|i| entry(i, hs.term, &mut rng)).collect();
                Op::Persist { hs: Some(hs.clone()), snap: None, entries }
            }
            5 => {
                hs.term += 1;
                hs.vote = Some(rng.range(1, 4));
                Op::Persist { hs: Some(hs.clone()), snap: None, entries: Vec::new() }
            }
            6 | 7 if last > hs.commit => {
                hs.commit = rng.range(hs.commit + 1, last + 1);
                Op::Persist { hs: Some(hs.clone()), snap: None, entries: Vec::new() }
            }
            8 if hs.commit > si => {
                let idx = rng.range(si + 1, hs.commit + 1);
                Op::Compact(Snapshot {
                    meta: SnapshotMeta { index: idx, term: model.term(idx).unwrap(), conf: conf() },
                    data: vec![idx as u8; 10],
                })
            }
            9 => {
                // Install a leader's snapshot past the end of the log.
                hs.term += 1;
                let idx = last + rng.range(1, 5);
                hs.commit = idx;
                Op::Persist {
                    hs: Some(hs.clone()),
                    snap: Some(Snapshot {
                        meta: SnapshotMeta { index: idx, term: hs.term, conf: conf() },
                        data: vec![7; 20],
                    }),
                    entries: Vec::new(),
                }
            }
            _ => continue,
        };
        apply(&mut model, &op).unwrap();
        ops.push(op);
    }
    ops
}

fn apply<S: Storage>(s: &mut S, op: &Op) -> Result<(), StorageError> {
    match op {
        Op::Persist { hs, snap, entries } => s.persist(hs.as_ref(), snap.as_ref(), entries),
        Op::Compact(snap) => s.compact(snap.clone()),
    }
}

fn log_after<S: Storage>(s: &S, floor: u64) -> Vec<Entry> {
    let lo = (floor + 1).max(s.first_index());
    s.entries(lo, s.last_index() + 1, u64::MAX).unwrap_or_default()
}

/// Recovered state must be the acknowledged one, the completed in-flight one, or the
/// acknowledged one plus a prefix of the in-flight entries.
fn verify(rec: &DurableStorage<FaultFs>, acked: &MemStorage, op: &Op, ctx: &str) {
    let mut pending = acked.clone();
    apply(&mut pending, op).unwrap();
    let rs = rec.snapshot_meta();
    assert!(rs == acked.snapshot_meta() || rs == pending.snapshot_meta(), "{ctx}: snapshot {rs:?}");
    let (rh, ah, ph) = (rec.hard_state(), acked.hard_state(), pending.hard_state());
    assert!(
        (rh.term, rh.vote) == (ah.term, ah.vote) || (rh.term, rh.vote) == (ph.term, ph.vote),
        "{ctx}: hard state {rh:?} vs acked {ah:?} / pending {ph:?}"
    );
    assert!(rh.commit <= rec.last_index() && rh.commit >= rs.index, "{ctx}: commit {rh:?}");
    let mut candidates = vec![acked.clone(), pending];
    if let Op::Persist { entries, snap: None, .. } = op {
        for p in 1..entries.len() {
            let mut c = acked.clone();
            c.persist(None, None, &entries[..p]).unwrap();
            candidates.push(c);
        }
    }
    let got = log_after(rec, rs.index);
    let ok = candidates.iter().any(|c| {
        c.last_index() == rec.last_index() && c.first_index() <= rs.index + 1 && log_after(c, rs.index) == got
    });
    assert!(
        ok,
        "{ctx}: recovered log {:?} matches no allowed state",
        got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()
    );
}

#[test]
fn crash_at_every_write_and_fsync_point_loses_nothing_acknowledged() {
    for seed in 0..12u64 {
        let ops = workload(seed, 40);
        let mut crash_point = 1;
        loop {
            let fs = FaultFs::new();
            fs.crash_after(crash_point);
            let mut acked = MemStorage::new_with_conf(conf());
            let mut crashed_op = None;
            match DurableStorage::open(fs.clone(), DIR, opts(), conf()) {
                Ok(mut st) => {
                    for (n, op) in ops.iter().enumerate() {
                        if apply(&mut st, op).is_err() {
                            crashed_op = Some(n);
                            break;
                        }
                        apply(&mut acked, op).unwrap();
                    }
                }
                Err(_) => assert!(fs.has_crashed()),
            }
            if !fs.has_crashed() {
                assert!(crash_point > ops.len() as u64, "workload too short to crash");
                eprintln!("seed {seed}: recovered from {} crash points", crash_point - 1);
                break;
            }
            fs.power_loss(seed * 1_000_003 + crash_point);
            let ctx = format!("seed {seed} crash point {crash_point} op {crashed_op:?}");
            let rec = DurableStorage::open(fs.clone(), DIR, opts(), conf())
                .unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
            match crashed_op {
                Some(n) => verify(&rec, &acked, &ops[n], &ctx),
                None => assert_eq!(rec.last_index(), 0, "{ctx}"),
            }
            // The recovered node redoes the interrupted write and goes on with the rest of the
            // workload (a second life in a new segment, whose conflicts and compactions reach
            // back into the first); the next reopen must return exactly the model's state.
            let mut rec = rec;
            let mut model = acked;
            for op in &ops[crashed_op.unwrap_or(0)..] {
                match (op, apply(&mut rec, op)) {
                    (Op::Compact(s), Err(StorageError::SnapshotOutOfDate)) if rec.snapshot_meta() == s.meta => {}
                    (_, r) => r.unwrap_or_else(|e| panic!("{ctx}: write after recovery failed: {e}")),
                }
                apply(&mut model, op).unwrap();
            }
            drop(rec);
            let again = DurableStorage::open(fs.clone(), DIR, opts(), conf()).unwrap();
            let si = model.snapshot_meta().index;
            assert_eq!(again.snapshot_meta(), model.snapshot_meta(), "{ctx}");
            assert_eq!(again.hard_state(), model.hard_state(), "{ctx}");
            assert_eq!(log_after(&again, si), log_after(&model, si), "{ctx}");
            crash_point += 1;
        }
    }
}

fn sample(index: u64) -> Entry {
    Entry { term: 1, index, kind: EntryKind::Normal, data: vec![index as u8; 16].into() }
}

fn segments(fs: &FaultFs) -> Vec<String> {
    let mut names: Vec<String> = fs.clone().list(DIR).unwrap().into_iter().filter(|n| n.starts_with("wal-")).collect();
    names.sort();
    names
}

#[test]
fn reopen_returns_what_was_persisted() {
    let fs = FaultFs::new();
    let mut st = DurableStorage::open(fs.clone(), DIR, opts(), conf()).unwrap();
    let ents: Vec<Entry> = (1..=50).map(sample).collect();
    let hs = HardState { term: 3, vote: Some(2), commit: 40 };
    st.persist(Some(&hs), None, &ents).unwrap();
    st.compact(Snapshot { meta: SnapshotMeta { index: 30, term: 1, conf: conf() }, data: b"state".to_vec() }).unwrap();
    assert!(st.segment_count() < 5, "covered segments are deleted");
    drop(st);
    let mut st = DurableStorage::open(fs, DIR, opts(), conf()).unwrap();
    assert_eq!(st.hard_state(), hs);
    assert_eq!(st.snapshot().unwrap().data, b"state");
    assert_eq!(st.first_index(), 31);
    assert_eq!(st.entries(31, 51, u64::MAX).unwrap(), ents[30..].to_vec());
}

#[test]
fn one_fsync_per_batch() {
    let fs = FaultFs::new();
    let mut st =
        DurableStorage::open(fs.clone(), DIR, DurableOptions { sync: true, segment_bytes: 1 << 20 }, conf()).unwrap();
    let before = fs.syncs();
    let ents: Vec<Entry> = (1..=500).map(sample).collect();
    let hs = HardState { term: 0, vote: None, commit: 10 };
    st.persist(Some(&hs), None, &ents).unwrap();
    assert_eq!(fs.syncs() - before, 1, "500 entries and a commit, one fsync");
}

#[test]
fn torn_tail_is_truncated() {
    let mut fs = FaultFs::new();
    let mut st = DurableStorage::open(fs.clone(), DIR, opts(), conf()).unwrap();
    st.persist(None, None, &(1..=3).map(sample).collect::<Vec<_>>()).unwrap();
    drop(st);
    let last = format!("{DIR}/{}", segments(&fs).last().unwrap());
    let len = fs.len(&last).unwrap();
    // Half a record: a length announcing more bytes than were written.
    fs.append(&last, &[60, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
    fs.sync(&last).unwrap();
    let st = DurableStorage::open(fs.clone(), DIR, opts(), conf()).unwrap();
    assert_eq!(st.last_index(), 3);
    assert_eq!(fs.len(&last), Some(len), "tail cut back to the last whole record");
}

#[test]
fn corrupt_middle_is_refused() {
    let fs = FaultFs::new();
    let mut st =
        DurableStorage::open(fs.clone(), DIR, DurableOptions { sync: true, segment_bytes: 1 << 20 }, conf()).unwrap();
    st.persist(None, None, &(1..=10).map(sample).collect::<Vec<_>>()).unwrap();
    drop(st);
    let seg = format!("{DIR}/{}", segments(&fs)[0]);
    for offset in [3usize, 20, 100] {
        let fs2 = fs.clone();
        fs2.corrupt(&seg, offset).unwrap();
        match DurableStorage::open(fs2.clone(), DIR, opts(), conf()) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, seg),
            other => panic!("offset {offset}: expected corruption error, got {other:?}"),
        }
        fs2.corrupt(&seg, offset).unwrap();
    }
    let hs_corrupt = fs.clone();
    let mut st = DurableStorage::open(hs_corrupt.clone(), DIR, opts(), conf()).unwrap();
    st.persist(Some(&HardState { term: 2, vote: Some(1), commit: 0 }), None, &[]).unwrap();
    drop(st);
    hs_corrupt.corrupt(&format!("{DIR}/hardstate"), 6).unwrap();
    let err = DurableStorage::open(hs_corrupt, DIR, opts(), conf()).unwrap_err();
    assert!(err.to_string().contains("hardstate"), "{err}");
}

/// A conflict written into a newer segment can reach back into an older one; once the older
/// segment is compacted away, recovery must still accept the newer one (a bug the simulator found).
#[test]
fn overwrite_reaching_into_a_compacted_segment_recovers() {
    let fs = FaultFs::new();
    let opts = DurableOptions { sync: true, segment_bytes: 1 << 20 };
    let mut st = DurableStorage::open(fs.clone(), DIR, opts.clone(), conf()).unwrap();
    st.persist(Some(&HardState { term: 1, vote: Some(1), commit: 5 }), None, &(1..=7).map(sample).collect::<Vec<_>>())
        .unwrap();
    drop(st);
    // Reopening starts a new segment; entry 8 lands there, then a new leader overwrites 7 and 8.
    let mut st = DurableStorage::open(fs.clone(), DIR, opts.clone(), conf()).unwrap();
    st.persist(None, None, &[sample(8)]).unwrap();
    let newer = |index| Entry { term: 2, ..sample(index) };
    let hs = HardState { term: 2, vote: Some(2), commit: 9 };
    st.persist(Some(&hs), None, &[newer(7), newer(8), newer(9)]).unwrap();
    st.compact(Snapshot { meta: SnapshotMeta { index: 8, term: 2, conf: conf() }, data: b"s".to_vec() }).unwrap();
    assert_eq!(segments(&fs).len(), 1, "the first segment is wholly covered by the snapshot");
    drop(st);
    let st = DurableStorage::open(fs, DIR, opts, conf()).unwrap();
    assert_eq!(st.first_index(), 9);
    assert_eq!(st.entries(9, 10, u64::MAX).unwrap(), vec![newer(9)]);
    assert_eq!(st.hard_state(), hs);
}

#[test]
fn missing_segment_is_refused() {
    let fs = FaultFs::new();
    let mut st = DurableStorage::open(fs.clone(), DIR, opts(), conf()).unwrap();
    for i in 1..=20 {
        st.persist(None, None, &[sample(i)]).unwrap();
    }
    drop(st);
    let segs = segments(&fs);
    assert!(segs.len() >= 3, "{segs:?}");
    for (seg, expect) in [(&segs[1], "does not continue"), (&segs[0], "segment missing")] {
        fs.clone().remove(&format!("{DIR}/{seg}")).unwrap();
        let err = DurableStorage::open(fs.clone(), DIR, opts(), conf()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }) && err.to_string().contains(expect), "{err}");
    }
}

/// Compaction must not delete a segment between two it keeps: an older one can hold entries
/// that a newer one overwrote, and without the overwrite replay resurrects them.
#[test]
fn compaction_keeps_segments_in_order() {
    let fs = FaultFs::new();
    let opts = DurableOptions { sync: true, segment_bytes: 1 << 20 };
    let newer = |index| Entry { term: 2, ..sample(index) };
    let mut st = DurableStorage::open(fs.clone(), DIR, opts.clone(), conf()).unwrap();
    st.persist(
        Some(&HardState { term: 1, vote: Some(1), commit: 14 }),
        None,
        &(1..=20).map(sample).collect::<Vec<_>>(),
    )
    .unwrap();
    drop(st);
    let mut st = DurableStorage::open(fs.clone(), DIR, opts.clone(), conf()).unwrap();
    st.persist(Some(&HardState { term: 2, vote: Some(2), commit: 14 }), None, &[newer(15), newer(16)]).unwrap();
    drop(st);
    let mut st = DurableStorage::open(fs.clone(), DIR, opts.clone(), conf()).unwrap();
    let hs = HardState { term: 2, vote: Some(2), commit: 17 };
    st.persist(Some(&hs), None, &[newer(17)]).unwrap();
    st.compact(Snapshot { meta: SnapshotMeta { index: 16, term: 2, conf: conf() }, data: b"s".to_vec() }).unwrap();
    drop(st);
    let st = DurableStorage::open(fs, DIR, opts, conf()).unwrap();
    assert_eq!(st.last_index(), 17, "the acknowledged entry 17 survives");
    assert_eq!(st.entries(17, 18, u64::MAX).unwrap(), vec![newer(17)]);
}
