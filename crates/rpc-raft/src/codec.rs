//! Versioned binary encoding of [`Message`]s and of the records the durable storage writes.
//!
//! Format (version 1), all integers little-endian:
//!
//! ```text
//! message   := version:u8 (=1) type:u8 from:u64 to:u64 term:u64 body
//! bytes     := len:u32 byte*len
//! entry     := term:u64 index:u64 kind:u8 (0 normal, 1 conf change) bytes
//! entries   := count:u32 entry*count
//! conf      := nvoters:u32 u64*nvoters nlearners:u32 u64*nlearners
//! snap_meta := index:u64 term:u64 conf
//! conf_entry := conf [bytes]   (the optional bytes are the change's context)
//! ```
//!
//! Body per type: 1 PreVote(last_index, last_term), 2 PreVoteResponse(reject:u8),
//! 3 Vote(last_index, last_term, transfer:u8), 4 VoteResponse(reject:u8),
//! 5 Append(prev_index, prev_term, entries, commit), 6 AppendResponse(index, reject:u8,
//! reject_hint, hint_term), 7 Heartbeat(commit, seq), 8 HeartbeatResponse(seq),
//! 9 InstallSnapshot(snap_meta, offset, bytes, done:u8), 10 SnapshotResponse(index,
//! next_offset), 11 TimeoutNow, 12 ReadIndex(bytes, lease:u8), 13 ReadIndexResponse(bytes, index).
//!
//! Decoding never panics and never allocates by a length before the bytes it announces
//! are present. This module owns the byte layout only; transport framing is the caller's.

use std::fmt;

use crate::message::{ConfState, Entry, EntryKind, Message, MessageBody, SnapshotMeta};

/// Version byte written at the start of every encoded message.
pub const VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Input ended while `needed` more bytes were expected.
    UnexpectedEof {
        /// Bytes still needed.
        needed: usize,
    },
    /// The version byte is not one this crate understands.
    UnsupportedVersion(u8),
    /// Unknown message type tag.
    UnknownMessageType(u8),
    /// Unknown entry kind tag.
    UnknownEntryKind(u8),
    /// A boolean byte other than 0 or 1.
    InvalidBool(u8),
    /// Bytes left over after a complete message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnexpectedEof { needed } => {
                write!(f, "input truncated: {needed} more bytes expected")
            }
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported encoding version {v}"),
            DecodeError::UnknownMessageType(t) => write!(f, "unknown message type {t}"),
            DecodeError::UnknownEntryKind(k) => write!(f, "unknown entry kind {k}"),
            DecodeError::InvalidBool(b) => write!(f, "invalid boolean byte {b}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes after message"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends little-endian primitives to a buffer.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    pub(crate) fn entry(&mut self, e: &Entry) {
        self.u64(e.term);
        self.u64(e.index);
        self.u8(match e.kind {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
        });
        self.bytes(&e.data);
    }
    pub(crate) fn conf(&mut self, c: &ConfState) {
        self.u32(c.voters.len() as u32);
        for v in &c.voters {
            self.u64(*v);
        }
        self.u32(c.learners.len() as u32);
        for l in &c.learners {
            self.u64(*l);
        }
    }
    pub(crate) fn snap_meta(&mut self, m: &SnapshotMeta) {
        self.u64(m.index);
        self.u64(m.term);
        self.conf(&m.conf);
    }
}

/// Reads little-endian primitives, checking bounds before every read.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::UnexpectedEof { needed: n - self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::InvalidBool(b)),
        }
    }
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub(crate) fn entry(&mut self) -> Result<Entry, DecodeError> {
        let term = self.u64()?;
        let index = self.u64()?;
        let kind = match self.u8()? {
            0 => EntryKind::Normal,
            1 => EntryKind::ConfChange,
            k => return Err(DecodeError::UnknownEntryKind(k)),
        };
        let data = self.bytes()?;
        Ok(Entry { term, index, kind, data: data.into() })
    }
    fn ids(&mut self) -> Result<Vec<u64>, DecodeError> {
        let n = self.u32()? as usize;
        // Each id takes 8 bytes: refuse counts the input cannot hold before allocating.
        if n.saturating_mul(8) > self.remaining() {
            return Err(DecodeError::UnexpectedEof { needed: n.saturating_mul(8) - self.remaining() });
        }
        (0..n).map(|_| self.u64()).collect()
    }
    pub(crate) fn conf(&mut self) -> Result<ConfState, DecodeError> {
        let voters = self.ids()?;
        let learners = self.ids()?;
        Ok(ConfState { voters, learners })
    }
    pub(crate) fn snap_meta(&mut self) -> Result<SnapshotMeta, DecodeError> {
        Ok(SnapshotMeta { index: self.u64()?, term: self.u64()?, conf: self.conf()? })
    }
}

/// Encodes a message (see the module docs for the layout).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut w = Writer(&mut buf);
    w.u8(VERSION);
    let tag = match &m.body {
        MessageBody::PreVote { .. } => 1,
        MessageBody::PreVoteResponse { .. } => 2,
        MessageBody::Vote { .. } => 3,
        MessageBody::VoteResponse { .. } => 4,
        MessageBody::Append { .. } => 5,
        MessageBody::AppendResponse { .. } => 6,
        MessageBody::Heartbeat { .. } => 7,
        MessageBody::HeartbeatResponse { .. } => 8,
        MessageBody::InstallSnapshot { .. } => 9,
        MessageBody::SnapshotResponse { .. } => 10,
        MessageBody::TimeoutNow => 11,
        MessageBody::ReadIndex { .. } => 12,
        MessageBody::ReadIndexResponse { .. } => 13,
    };
    w.u8(tag);
    w.u64(m.from);
    w.u64(m.to);
    w.u64(m.term);
    match &m.body {
        MessageBody::PreVote { last_index, last_term } => {
            w.u64(*last_index);
            w.u64(*last_term);
        }
        MessageBody::PreVoteResponse { reject } | MessageBody::VoteResponse { reject } => w.bool(*reject),
        MessageBody::Vote { last_index, last_term, transfer } => {
            w.u64(*last_index);
            w.u64(*last_term);
            w.bool(*transfer);
        }
        MessageBody::Append { prev_index, prev_term, entries, commit } => {
            w.u64(*prev_index);
            w.u64(*prev_term);
            w.u32(entries.len() as u32);
            for e in entries {
                w.entry(e);
            }
            w.u64(*commit);
        }
        MessageBody::AppendResponse { index, reject, reject_hint, hint_term } => {
            w.u64(*index);
            w.bool(*reject);
            w.u64(*reject_hint);
            w.u64(*hint_term);
        }
        MessageBody::Heartbeat { commit, seq } => {
            w.u64(*commit);
            w.u64(*seq);
        }
        MessageBody::HeartbeatResponse { seq } => w.u64(*seq),
        MessageBody::InstallSnapshot { meta, offset, data, done } => {
            w.snap_meta(meta);
            w.u64(*offset);
            w.bytes(data);
            w.bool(*done);
        }
        MessageBody::SnapshotResponse { index, next_offset } => {
            w.u64(*index);
            w.u64(*next_offset);
        }
        MessageBody::TimeoutNow => {}
        MessageBody::ReadIndex { ctx, lease } => {
            w.bytes(ctx);
            w.bool(*lease);
        }
        MessageBody::ReadIndexResponse { ctx, index } => {
            w.bytes(ctx);
            w.u64(*index);
        }
    }
    buf
}

/// Decodes a message produced by [`encode_message`].
pub fn decode_message(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let tag = r.u8()?;
    let from = r.u64()?;
    let to = r.u64()?;
    let term = r.u64()?;
    let body = match tag {
        1 => MessageBody::PreVote { last_index: r.u64()?, last_term: r.u64()? },
        2 => MessageBody::PreVoteResponse { reject: r.bool()? },
        3 => MessageBody::Vote { last_index: r.u64()?, last_term: r.u64()?, transfer: r.bool()? },
        4 => MessageBody::VoteResponse { reject: r.bool()? },
        5 => {
            let prev_index = r.u64()?;
            let prev_term = r.u64()?;
            let n = r.u32()? as usize;
            // No preallocation by `n`: entries are pushed only as their bytes decode.
            let mut entries = Vec::new();
            for _ in 0..n {
                entries.push(r.entry()?);
            }
            MessageBody::Append { prev_index, prev_term, entries, commit: r.u64()? }
        }
        6 => MessageBody::AppendResponse {
            index: r.u64()?,
            reject: r.bool()?,
            reject_hint: r.u64()?,
            hint_term: r.u64()?,
        },
        7 => MessageBody::Heartbeat { commit: r.u64()?, seq: r.u64()? },
        8 => MessageBody::HeartbeatResponse { seq: r.u64()? },
        9 => MessageBody::InstallSnapshot { meta: r.snap_meta()?, offset: r.u64()?, data: r.bytes()?, done: r.bool()? },
        10 => MessageBody::SnapshotResponse { index: r.u64()?, next_offset: r.u64()? },
        11 => MessageBody::TimeoutNow,
        12 => MessageBody::ReadIndex { ctx: r.bytes()?, lease: r.bool()? },
        13 => MessageBody::ReadIndexResponse { ctx: r.bytes()?, index: r.u64()? },
        t => return Err(DecodeError::UnknownMessageType(t)),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(Message { from, to, term, body })
}

/// Encodes the payload of a conf-change entry: the new configuration and the caller's
/// context for it (empty writes none, so the entry reads as a bare configuration).
pub fn encode_conf_entry(c: &ConfState, context: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = Writer(&mut buf);
    w.conf(c);
    if !context.is_empty() {
        w.bytes(context);
    }
    buf
}

/// Decodes a conf-change entry's payload into its configuration and context.
pub fn decode_conf_entry(buf: &[u8]) -> Result<(ConfState, Vec<u8>), DecodeError> {
    let mut r = Reader::new(buf);
    let c = r.conf()?;
    let context = if r.remaining() == 0 { Vec::new() } else { r.bytes()? };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok((c, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let e = |i| Entry {
            term: 2,
            index: i,
            kind: if i % 2 == 0 { EntryKind::Normal } else { EntryKind::ConfChange },
            data: vec![i as u8; i as usize].into(),
        };
        let bodies = vec![
            MessageBody::PreVote { last_index: 3, last_term: 2 },
            MessageBody::PreVoteResponse { reject: true },
            MessageBody::Vote { last_index: 3, last_term: 2, transfer: true },
            MessageBody::VoteResponse { reject: false },
            MessageBody::Append { prev_index: 1, prev_term: 1, entries: vec![e(2), e(3)], commit: 1 },
            MessageBody::AppendResponse { index: 9, reject: true, reject_hint: 4, hint_term: 1 },
            MessageBody::Heartbeat { commit: 5, seq: 7 },
            MessageBody::HeartbeatResponse { seq: 7 },
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta { index: 10, term: 3, conf: ConfState { voters: vec![1, 2, 3], learners: vec![4] } },
                offset: 100,
                data: vec![1, 2, 3],
                done: false,
            },
            MessageBody::SnapshotResponse { index: 10, next_offset: 103 },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndex { ctx: b"abc".to_vec(), lease: true },
            MessageBody::ReadIndexResponse { ctx: b"abc".to_vec(), index: 12 },
        ];
        bodies.into_iter().map(|body| Message { from: 1, to: 2, term: 5, body }).collect()
    }

    #[test]
    fn roundtrip_every_message_type() {
        for m in samples() {
            let bytes = encode_message(&m);
            assert_eq!(decode_message(&bytes), Ok(m));
        }
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for m in samples() {
            let bytes = encode_message(&m);
            for cut in 0..bytes.len() {
                assert!(decode_message(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn garbage_and_huge_lengths_are_rejected() {
        assert_eq!(decode_message(&[9]), Err(DecodeError::UnsupportedVersion(9)));
        let mut m = encode_message(&samples()[0]);
        m[1] = 200;
        assert_eq!(decode_message(&m), Err(DecodeError::UnknownMessageType(200)));
        // An Append claiming u32::MAX entries with no bytes behind it must fail fast.
        let mut buf = vec![VERSION, 5];
        buf.extend_from_slice(&[0u8; 24 + 16]);
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_message(&buf), Err(DecodeError::UnexpectedEof { .. })));
        let mut extra = encode_message(&samples()[10]);
        extra.push(0);
        assert_eq!(decode_message(&extra), Err(DecodeError::TrailingBytes(1)));
        // Pseudo-random garbage never panics.
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_message(&bytes);
        }
    }

    #[test]
    fn conf_state_roundtrip() {
        let c = ConfState { voters: vec![1, 2], learners: vec![3] };
        assert_eq!(decode_conf_entry(&encode_conf_entry(&c, b"")), Ok((c.clone(), Vec::new())));
        assert!(decode_conf_entry(&[1, 0, 0]).is_err());
        assert_eq!(decode_conf_entry(&encode_conf_entry(&c, b"ctx")), Ok((c.clone(), b"ctx".to_vec())));
        let mut trailing = encode_conf_entry(&c, b"ctx");
        trailing.push(0);
        assert_eq!(decode_conf_entry(&trailing), Err(DecodeError::TrailingBytes(1)));
    }
}
