//! A simulated node's disk: either a [`MemStorage`] (everything persisted survives a
//! crash) or a [`DurableStorage`] on a [`FaultFs`] (a crash is a power loss: data not
//! yet fsynced is lost, and a crash can hit in the middle of persisting a `Ready`).

use crate::message::{ConfState, Entry, HardState, Snapshot, SnapshotMeta};
use crate::storage::{DurableOptions, DurableStorage, FaultFs, MemStorage, Storage, StorageError};

const DIR: &str = "node";

pub(crate) enum Disk {
    Mem(MemStorage),
    Durable(DurableStorage<FaultFs>),
}

impl Disk {
    pub(crate) fn new(durable: bool, conf: ConfState) -> Result<Self, StorageError> {
        if durable {
            let opts = DurableOptions { sync: true, segment_bytes: 4096 };
            Ok(Disk::Durable(DurableStorage::open(FaultFs::new(), DIR, opts, conf)?))
        } else if conf.voters.is_empty() {
            Ok(Disk::Mem(MemStorage::new()))
        } else {
            Ok(Disk::Mem(MemStorage::new_with_conf(conf)))
        }
    }

    /// The file system, for durable disks.
    pub(crate) fn fault_fs(&self) -> Option<FaultFs> {
        match self {
            Disk::Mem(_) => None,
            Disk::Durable(d) => Some(d.fs().clone()),
        }
    }

    /// What is left after a crash: memory storage as is; durable storage after a
    /// power loss and recovery from the files.
    pub(crate) fn after_crash(self, seed: u64) -> Result<Self, StorageError> {
        match self {
            Disk::Mem(m) => Ok(Disk::Mem(m)),
            Disk::Durable(d) => {
                let fs = d.fs().clone();
                drop(d);
                fs.power_loss(seed);
                let opts = DurableOptions { sync: true, segment_bytes: 4096 };
                Ok(Disk::Durable(DurableStorage::open(fs, DIR, opts, ConfState::default())?))
            }
        }
    }
}

impl Storage for Disk {
    fn hard_state(&self) -> HardState {
        match self {
            Disk::Mem(s) => s.hard_state(),
            Disk::Durable(s) => s.hard_state(),
        }
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        match self {
            Disk::Mem(s) => s.entries(lo, hi, max_bytes),
            Disk::Durable(s) => s.entries(lo, hi, max_bytes),
        }
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        match self {
            Disk::Mem(s) => s.term(index),
            Disk::Durable(s) => s.term(index),
        }
    }
    fn first_index(&self) -> u64 {
        match self {
            Disk::Mem(s) => s.first_index(),
            Disk::Durable(s) => s.first_index(),
        }
    }
    fn last_index(&self) -> u64 {
        match self {
            Disk::Mem(s) => s.last_index(),
            Disk::Durable(s) => s.last_index(),
        }
    }
    fn snapshot_meta(&self) -> SnapshotMeta {
        match self {
            Disk::Mem(s) => s.snapshot_meta(),
            Disk::Durable(s) => s.snapshot_meta(),
        }
    }
    fn snapshot(&mut self) -> Result<Snapshot, StorageError> {
        match self {
            Disk::Mem(s) => s.snapshot(),
            Disk::Durable(s) => s.snapshot(),
        }
    }
    fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        match self {
            Disk::Mem(s) => s.persist(hard_state, snapshot, entries),
            Disk::Durable(s) => s.persist(hard_state, snapshot, entries),
        }
    }
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        match self {
            Disk::Mem(s) => s.compact(snapshot),
            Disk::Durable(s) => s.compact(snapshot),
        }
    }
}
