//! A tiny key-value state machine (get, put, compare-and-swap on `u64` keys and
//! values) used by the simulator, the linearizability tests and the benchmark.
//!
//! Owns command encoding, application and snapshots of the map. It knows nothing about
//! Raft beyond being fed committed entry payloads.

use std::collections::BTreeMap;

use crate::codec::{DecodeError, Reader, Writer};

/// An operation on the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Read a key.
    Get {
        /// Key.
        key: u64,
    },
    /// Write a key.
    Put {
        /// Key.
        key: u64,
        /// New value.
        value: u64,
    },
    /// Write `new` if the current value equals `expected` (`None`: key absent).
    Cas {
        /// Key.
        key: u64,
        /// Expected current value.
        expected: Option<u64>,
        /// New value.
        new: u64,
    },
}

impl KvOp {
    /// The key the operation touches.
    pub fn key(&self) -> u64 {
        match *self {
            KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Cas { key, .. } => key,
        }
    }
}

/// Result of applying a [`KvOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// Value read (`None`: absent).
    Value(Option<u64>),
    /// Put done.
    Written,
    /// Whether the compare-and-swap took effect.
    Swapped(bool),
}

/// A command as proposed to Raft: the operation tagged with a unique request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCommand {
    /// Unique id chosen by the client, to match the result to the request.
    pub request: u64,
    /// The operation.
    pub op: KvOp,
}

fn put_opt(w: &mut Writer<'_>, v: Option<u64>) {
    match v {
        Some(v) => {
            w.u8(1);
            w.u64(v);
        }
        None => w.u8(0),
    }
}

fn get_opt(r: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    Ok(if r.bool()? { Some(r.u64()?) } else { None })
}

impl KvCommand {
    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32);
        let mut w = Writer(&mut buf);
        w.u64(self.request);
        match self.op {
            KvOp::Get { key } => {
                w.u8(0);
                w.u64(key);
            }
            KvOp::Put { key, value } => {
                w.u8(1);
                w.u64(key);
                w.u64(value);
            }
            KvOp::Cas { key, expected, new } => {
                w.u8(2);
                w.u64(key);
                put_opt(&mut w, expected);
                w.u64(new);
            }
        }
        buf
    }

    /// Decodes a payload written by [`KvCommand::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let request = r.u64()?;
        let op = match r.u8()? {
            0 => KvOp::Get { key: r.u64()? },
            1 => KvOp::Put { key: r.u64()?, value: r.u64()? },
            2 => KvOp::Cas { key: r.u64()?, expected: get_opt(&mut r)?, new: r.u64()? },
            t => return Err(DecodeError::UnknownMessageType(t)),
        };
        Ok(KvCommand { request, op })
    }
}

/// The key-value map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<u64, u64>,
}

impl KvStore {
    /// Empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `op` and returns its result.
    pub fn apply(&mut self, op: &KvOp) -> KvOutput {
        match *op {
            KvOp::Get { key } => KvOutput::Value(self.map.get(&key).copied()),
            KvOp::Put { key, value } => {
                self.map.insert(key, value);
                KvOutput::Written
            }
            KvOp::Cas { key, expected, new } => {
                if self.map.get(&key).copied() == expected {
                    self.map.insert(key, new);
                    KvOutput::Swapped(true)
                } else {
                    KvOutput::Swapped(false)
                }
            }
        }
    }

    /// Current value of `key`.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.map.get(&key).copied()
    }

    /// Serializes the whole map.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(4 + self.map.len() * 16);
        let mut w = Writer(&mut buf);
        w.u32(self.map.len() as u32);
        for (k, v) in &self.map {
            w.u64(*k);
            w.u64(*v);
        }
        buf
    }

    /// Rebuilds a store from [`KvStore::snapshot`] bytes (empty bytes: empty store).
    pub fn restore(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.is_empty() {
            return Ok(Self::default());
        }
        let mut r = Reader::new(buf);
        let n = r.u32()?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = r.u64()?;
            map.insert(k, r.u64()?);
        }
        Ok(KvStore { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_encoding() {
        let mut s = KvStore::new();
        let cmds = [
            (KvOp::Get { key: 1 }, KvOutput::Value(None)),
            (KvOp::Cas { key: 1, expected: None, new: 5 }, KvOutput::Swapped(true)),
            (KvOp::Put { key: 2, value: 7 }, KvOutput::Written),
            (KvOp::Cas { key: 1, expected: Some(4), new: 6 }, KvOutput::Swapped(false)),
            (KvOp::Get { key: 1 }, KvOutput::Value(Some(5))),
        ];
        for (i, (op, want)) in cmds.iter().enumerate() {
            let c = KvCommand { request: i as u64, op: *op };
            assert_eq!(KvCommand::decode(&c.encode()), Ok(c));
            assert_eq!(s.apply(op), *want);
        }
        let r = KvStore::restore(&s.snapshot()).unwrap();
        assert_eq!(r, s);
        assert!(KvCommand::decode(&[1, 2]).is_err());
        assert!(KvStore::restore(&[5, 0, 0, 0]).is_err());
    }
}
