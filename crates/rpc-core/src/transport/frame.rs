//! The wire format: frames and their tokio-util codec.
//!
//! `docs/PROTOCOL.md` describes every byte. This module owns parsing and writing frames; it knows
//! nothing of connections, calls or codecs beyond carrying the codec's one-byte id.

use crate::{ByteStr, Code, Metadata};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;
use tokio_util::codec::{Decoder, Encoder};

/// Protocol version spoken by this build.
pub const VERSION: u8 = 1;

/// The eight bytes a client sends first on every connection.
///
/// The first byte (0xF0) can never start an Apache Thrift framed message (its length would be
/// negative), so one port can tell the two protocols apart.
pub const PREFACE: [u8; 8] = [0xF0, b'R', b'P', b'C', VERSION, 0, 0, 0];

/// Bytes of the fixed header after the length prefix: kind, flags, codec, request id.
const FIXED_HEADER: usize = 7;
/// The kind byte of a reply frame.
const KIND_REPLY: u8 = 2;

/// Default largest frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// One frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Request id: pairs a reply with its call. For `GoAway` it is the last call id the sender
    /// will process.
    pub id: u32,
    /// Wire id of the codec that encoded `body` (0 when there is no encoded body).
    pub codec: u8,
    /// Kind-specific header.
    pub head: Head,
    /// The payload: an encoded message for calls and replies, opaque bytes for pings.
    pub body: Bytes,
}

/// The kind-specific part of a frame's header.
#[derive(Clone, Debug, PartialEq)]
pub enum Head {
    /// A call that expects a reply (`oneway == false`) or none.
    Call {
        /// Service name.
        service: ByteStr,
        /// Method name.
        method: ByteStr,
        /// Time the caller still waits, relative to when the frame was written.
        timeout: Option<Duration>,
        /// Request metadata.
        metadata: Metadata,
        /// True for a call that gets no reply.
        oneway: bool,
    },
    /// A successful reply.
    Reply {
        /// Reply metadata.
        metadata: Metadata,
    },
    /// A failed call.
    Error {
        /// Status code.
        code: Code,
        /// Message for the caller.
        message: String,
        /// Reply metadata.
        metadata: Metadata,
    },
    /// The caller gave up on call `id`.
    Cancel,
    /// Liveness probe; the peer answers with `Pong` and the same body.
    Ping,
    /// Answer to `Ping`.
    Pong,
    /// The sender will take no calls after `id`; finish those and go elsewhere.
    GoAway {
        /// Why.
        code: Code,
        /// Human-readable reason.
        message: String,
    },
    /// Opens a stream: a call whose request or reply (or both) is a sequence of items.
    Open {
        /// Bytes of items the server may send before the client grants more with `Credit`.
        window: u32,
        /// Service name.
        service: ByteStr,
        /// Method name.
        method: ByteStr,
        /// Time the caller still waits for the whole stream, relative to when the frame was written.
        timeout: Option<Duration>,
        /// Request metadata.
        metadata: Metadata,
    },
    /// One item of stream `id`, from either side.
    Item,
    /// The client sends no more items on stream `id`.
    HalfClose,
    /// The server ends stream `id`: `None` for success, or the status it failed with.
    End {
        /// The failure, if the stream did not succeed.
        status: Option<(Code, String)>,
        /// Trailing metadata.
        metadata: Metadata,
    },
    /// The receiver of stream `id` lets its peer send `bytes` more bytes of items.
    Credit {
        /// Bytes granted.
        bytes: u32,
    },
}

impl Head {
    /// The frame kind byte.
    fn kind(&self) -> u8 {
        match self {
            Head::Call { oneway: false, .. } => 1,
            Head::Reply { .. } => KIND_REPLY,
            Head::Error { .. } => 3,
            Head::Call { oneway: true, .. } => 4,
            Head::Cancel => 5,
            Head::Ping => 6,
            Head::Pong => 7,
            Head::GoAway { .. } => 8,
            Head::Open { .. } => 9,
            Head::Item => 10,
            Head::HalfClose => 11,
            Head::End { .. } => 12,
            Head::Credit { .. } => 13,
        }
    }
}

/// A frame that could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds the configured limit; nothing was allocated for it.
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The bytes do not follow the protocol.
    Malformed(String),
    /// The connection preface is missing or of another version.
    BadPreface(String),
    /// Reading from the socket failed.
    Io(std::io::Error),
    /// A frame took longer than the frame timeout to arrive.
    Stalled(std::time::Duration),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the limit of {max} bytes; raise max_frame_size on both \
                 ends or send smaller messages"
            ),
            FrameError::Malformed(m) => write!(f, "malformed frame: {m}"),
            FrameError::BadPreface(m) => write!(f, "bad connection preface: {m}"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
            FrameError::Stalled(after) => {
                write!(f, "a frame has been arriving for over {after:?} and is still incomplete; send each frame whole and promptly")
            }
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Checks the 8-byte connection preface.
pub fn check_preface(bytes: &[u8; 8]) -> Result<(), FrameError> {
    if bytes[..4] != PREFACE[..4] {
        return Err(FrameError::BadPreface(format!(
            "expected the bytes F0 52 50 43 (\"\\xF0RPC\"), got {:02X?}; is the client speaking this protocol?",
            &bytes[..4]
        )));
    }
    if bytes[4] != VERSION {
        return Err(FrameError::BadPreface(format!(
            "client speaks protocol version {}, this server speaks version {VERSION}",
            bytes[4]
        )));
    }
    Ok(())
}

/// Length-prefixed frame codec with a size limit.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame_size` bytes (after the prefix).
    pub fn new(max_frame_size: usize) -> FrameCodec {
        FrameCodec { max_frame_size }
    }

    /// The largest frame this codec writes or reads, after the length prefix.
    pub(crate) fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

/// The most a decoder reserves ahead of the bytes that arrived; the buffer grows by doubling
/// beyond that as they keep arriving.
const RESERVE_STEP: usize = 64 * 1024;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_size {
            return Err(FrameError::TooLarge { len, max: self.max_frame_size });
        }
        if len < FIXED_HEADER {
            return Err(FrameError::Malformed(format!("length {len} is shorter than the {FIXED_HEADER}-byte header")));
        }
        if src.len() < 4 + len {
            // Room for what is coming, a bounded step at a time: a declared length is a claim,
            // and reserving all of it at once let idle connections pin max_frame_size each.
            src.reserve((4 + len - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        src.advance(4);
        parse(src.split_to(len).freeze()).map(Some)
    }
}

fn parse(mut buf: Bytes) -> Result<Frame, FrameError> {
    let kind = buf.get_u8();
    let flags = buf.get_u8();
    let codec = buf.get_u8();
    let id = buf.get_u32();
    if flags != 0 {
        return Err(FrameError::Malformed(format!("unknown flags {flags:#04x} in frame {id}")));
    }
    let head = match kind {
        1 | 4 => {
            let timeout_us = take_u64(&mut buf, "timeout")?;
            let service = take_str8(&mut buf, "service name")?;
            let method = take_str8(&mut buf, "method name")?;
            let metadata = take_metadata(&mut buf)?;
            Head::Call {
                service,
                method,
                timeout: (timeout_us != 0).then(|| Duration::from_micros(timeout_us)),
                metadata,
                oneway: kind == 4,
            }
        }
        2 => Head::Reply { metadata: take_metadata(&mut buf)? },
        3 => {
            let code = Code::from_u16(take_u16(&mut buf, "status code")?);
            let message = take_string16(&mut buf, "status message")?;
            let metadata = take_metadata(&mut buf)?;
            Head::Error { code, message, metadata }
        }
        5 => Head::Cancel,
        6 => Head::Ping,
        7 => Head::Pong,
        8 => {
            let code = Code::from_u16(take_u16(&mut buf, "go-away code")?);
            let message = take_string16(&mut buf, "go-away message")?;
            Head::GoAway { code, message }
        }
        9 => {
            let window = take_u32(&mut buf, "stream window")?;
            let timeout_us = take_u64(&mut buf, "timeout")?;
            let service = take_str8(&mut buf, "service name")?;
            let method = take_str8(&mut buf, "method name")?;
            let metadata = take_metadata(&mut buf)?;
            Head::Open {
                window,
                service,
                method,
                timeout: (timeout_us != 0).then(|| Duration::from_micros(timeout_us)),
                metadata,
            }
        }
        10 => Head::Item,
        11 => Head::HalfClose,
        12 => {
            let code = take_u16(&mut buf, "end status code")?;
            let message = take_string16(&mut buf, "end status message")?;
            let metadata = take_metadata(&mut buf)?;
            // Zero is success; any other value is a status code, unknown ones read as UNKNOWN.
            Head::End { status: (code != 0).then(|| (Code::from_u16(code), message)), metadata }
        }
        13 => Head::Credit { bytes: take_u32(&mut buf, "credit")? },
        other => return Err(FrameError::Malformed(format!("unknown frame kind {other} in frame {id}"))),
    };
    Ok(Frame { id, codec, head, body: buf })
}

#[inline]
fn need(buf: &Bytes, n: usize, what: &str) -> Result<(), FrameError> {
    if buf.remaining() < n {
        return Err(FrameError::Malformed(format!(
            "{what} needs {n} bytes but the frame has {} left",
            buf.remaining()
        )));
    }
    Ok(())
}

fn take_u16(buf: &mut Bytes, what: &str) -> Result<u16, FrameError> {
    need(buf, 2, what)?;
    Ok(buf.get_u16())
}

fn take_u32(buf: &mut Bytes, what: &str) -> Result<u32, FrameError> {
    need(buf, 4, what)?;
    Ok(buf.get_u32())
}

fn take_u64(buf: &mut Bytes, what: &str) -> Result<u64, FrameError> {
    need(buf, 8, what)?;
    Ok(buf.get_u64())
}

#[inline]
fn take_bytes(buf: &mut Bytes, len: usize, what: &str) -> Result<Bytes, FrameError> {
    need(buf, len, what)?;
    Ok(buf.split_to(len))
}

#[inline]
fn utf8(bytes: Bytes, what: &str) -> Result<ByteStr, FrameError> {
    ByteStr::from_utf8(bytes).map_err(|e| FrameError::Malformed(format!("{what} is not UTF-8: {e}")))
}

#[inline]
fn take_str8(buf: &mut Bytes, what: &str) -> Result<ByteStr, FrameError> {
    need(buf, 1, what)?;
    let len = buf.get_u8() as usize;
    utf8(take_bytes(buf, len, what)?, what)
}

fn take_string16(buf: &mut Bytes, what: &str) -> Result<String, FrameError> {
    let len = take_u16(buf, what)? as usize;
    Ok(utf8(take_bytes(buf, len, what)?, what)?.as_str().to_owned())
}

fn take_metadata(buf: &mut Bytes) -> Result<Metadata, FrameError> {
    need(buf, 1, "metadata count")?;
    let count = buf.get_u8() as usize;
    if count > Metadata::MAX_ENTRIES {
        return Err(FrameError::Malformed(format!(
            "{count} metadata entries exceed the limit of {}",
            Metadata::MAX_ENTRIES
        )));
    }
    let mut md = Metadata::new();
    for _ in 0..count {
        let key = take_str8(buf, "metadata key")?;
        let value = take_string16(buf, "metadata value")?;
        md.insert(key.as_str(), value);
    }
    Ok(md)
}

/// Checks the limits the wire format imposes on what a caller put in a call's header.
pub fn check_call_head(service: &ByteStr, method: &ByteStr, metadata: &Metadata) -> Result<(), String> {
    if service.len() > u8::MAX as usize || method.len() > u8::MAX as usize {
        return Err("service and method names are limited to 255 bytes".into());
    }
    check_metadata(metadata)
}

/// Checks that `metadata` fits the wire's limits (entries, key and value lengths).
pub fn check_metadata(metadata: &Metadata) -> Result<(), String> {
    if metadata.len() > Metadata::MAX_ENTRIES {
        return Err(format!("{} metadata entries exceed the limit of {}", metadata.len(), Metadata::MAX_ENTRIES));
    }
    for (k, v) in metadata.iter() {
        if k.len() > Metadata::MAX_KEY_LEN || v.len() > Metadata::MAX_VALUE_LEN {
            return Err(format!(
                "metadata key {k:?} or its value is too long (keys up to {} bytes, values up to {})",
                Metadata::MAX_KEY_LEN,
                Metadata::MAX_VALUE_LEN
            ));
        }
    }
    Ok(())
}

fn metadata_len(md: &Metadata) -> usize {
    1 + md.iter().map(|(k, v)| 1 + k.len() + 2 + v.len()).sum::<usize>()
}

fn put_metadata(dst: &mut BytesMut, md: &Metadata) {
    dst.put_u8(md.len() as u8);
    for (k, v) in md.iter() {
        dst.put_u8(k.len() as u8);
        dst.put_slice(k.as_bytes());
        dst.put_u16(v.len() as u16);
        dst.put_slice(v.as_bytes());
    }
}

fn put_string16(dst: &mut BytesMut, s: &str) {
    // Messages are informational; truncating at a char boundary keeps the frame valid.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    dst.put_u16(end as u16);
    dst.put_slice(&s.as_bytes()[..end]);
}

fn string16_len(s: &str) -> usize {
    2 + s.len().min(u16::MAX as usize)
}

impl Frame {
    /// Bytes this frame occupies on the wire, including the length prefix.
    pub fn encoded_len(&self) -> usize {
        let head = match &self.head {
            Head::Call { service, method, metadata, .. } => {
                8 + 1 + service.len() + 1 + method.len() + metadata_len(metadata)
            }
            Head::Reply { metadata } => metadata_len(metadata),
            Head::Error { message, metadata, .. } => 2 + string16_len(message) + metadata_len(metadata),
            Head::Cancel | Head::Ping | Head::Pong | Head::Item | Head::HalfClose => 0,
            Head::GoAway { message, .. } => 2 + string16_len(message),
            Head::Open { service, method, metadata, .. } => {
                4 + 8 + 1 + service.len() + 1 + method.len() + metadata_len(metadata)
            }
            Head::End { status, metadata } => {
                2 + string16_len(status.as_ref().map_or("", |(_, m)| m)) + metadata_len(metadata)
            }
            Head::Credit { .. } => 4,
        };
        4 + FIXED_HEADER + head + self.body.len()
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    /// Writes `frame`; the caller has checked header limits with [`check_call_head`].
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.reserve(frame.encoded_len());
        put_head(dst, frame.id, frame.codec, &frame.head);
        dst.put_slice(&frame.body);
        finish_frame(dst, start, self.max_frame_size)
    }
}

/// Writes a length placeholder and the header; [`finish_frame`] fills the length in.
fn put_head(dst: &mut BytesMut, id: u32, codec: u8, head: &Head) {
    put_prelude(dst, head.kind(), codec, id);
    match head {
        Head::Call { service, method, timeout, metadata, .. } => put_call(dst, service, method, *timeout, metadata),
        Head::Reply { metadata } => put_metadata(dst, metadata),
        Head::Error { code, message, metadata } => {
            dst.put_u16(code.as_u16());
            put_string16(dst, message);
            put_metadata(dst, metadata);
        }
        Head::Cancel | Head::Ping | Head::Pong | Head::Item | Head::HalfClose => {}
        Head::GoAway { code, message } => {
            dst.put_u16(code.as_u16());
            put_string16(dst, message);
        }
        Head::Open { window, service, method, timeout, metadata } => {
            dst.put_u32(*window);
            put_call(dst, service, method, *timeout, metadata);
        }
        Head::End { status, metadata } => {
            let (code, message) = status.as_ref().map_or((0, ""), |(code, message)| (code.as_u16(), message));
            dst.put_u16(code);
            put_string16(dst, message);
            put_metadata(dst, metadata);
        }
        Head::Credit { bytes } => dst.put_u32(*bytes),
    }
}

/// The length placeholder and the fixed header every frame starts with.
fn put_prelude(dst: &mut BytesMut, kind: u8, codec: u8, id: u32) {
    // One fixed-size copy rather than five growing writes: this runs for every frame.
    let [a, b, c, d] = id.to_be_bytes();
    dst.put_slice(&[0, 0, 0, 0, kind, 0, codec, a, b, c, d]);
}

/// The call header shared by `Call`, `Oneway` and `Open`.
fn put_call(dst: &mut BytesMut, service: &ByteStr, method: &ByteStr, timeout: Option<Duration>, metadata: &Metadata) {
    // Round up so that a sub-microsecond timeout is not sent as "no deadline".
    let us = timeout.map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1));
    let [a, b, c, d, e, f, g, h] = us.to_be_bytes();
    dst.put_slice(&[a, b, c, d, e, f, g, h, service.len() as u8]);
    dst.put_slice(service.as_bytes());
    dst.put_u8(method.len() as u8);
    dst.put_slice(method.as_bytes());
    put_metadata(dst, metadata);
}

/// Fills in the length of the frame that starts at `start`, or removes it if it is too large.
fn finish_frame(dst: &mut BytesMut, start: usize, max_frame_size: usize) -> Result<(), FrameError> {
    let len = dst.len() - start - 4;
    if len > max_frame_size {
        dst.truncate(start);
        return Err(FrameError::TooLarge { len, max: max_frame_size });
    }
    dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends a reply frame built from its parts, so that a reply is never assembled into a
/// [`Frame`] first; if it is larger than `max_frame_size`, nothing is appended.
pub(crate) fn put_reply(
    dst: &mut BytesMut,
    id: u32,
    codec: u8,
    metadata: &Metadata,
    body: &[u8],
    max_frame_size: usize,
) -> Result<(), FrameError> {
    let start = dst.len();
    dst.reserve(4 + FIXED_HEADER + metadata_len(metadata) + body.len());
    put_prelude(dst, KIND_REPLY, codec, id);
    put_metadata(dst, metadata);
    dst.put_slice(body);
    finish_frame(dst, start, max_frame_size)
}

/// Appends the header of a frame to `dst` and returns where the frame starts; append the body,
/// then call [`close_frame`] with that position.
pub(crate) fn open_frame(dst: &mut BytesMut, id: u32, codec: u8, head: &Head) -> usize {
    let start = dst.len();
    put_head(dst, id, codec, head);
    start
}

/// Fills in the length of the frame [`open_frame`] started at `start`, or removes it if it is
/// larger than `max_frame_size`.
pub(crate) fn close_frame(dst: &mut BytesMut, start: usize, max_frame_size: usize) -> Result<(), FrameError> {
    finish_frame(dst, start, max_frame_size)
}

/// A frame built in its own send buffer: the header is written first, the body is encoded right
/// after it by the caller, and the request id and length are filled in last. One allocation
/// per frame, and the body is never copied.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: BytesMut,
    head_len: usize,
}

impl FrameBuilder {
    /// Starts a frame with `head`; `body_hint` is the expected body size.
    pub fn new(codec: u8, head: &Head, body_hint: usize) -> FrameBuilder {
        let mut buf = BytesMut::with_capacity(64 + body_hint);
        put_head(&mut buf, 0, codec, head);
        FrameBuilder { head_len: buf.len(), buf }
    }

    /// Bytes of body appended so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - self.head_len
    }

    /// The buffer the body is appended to.
    pub fn body_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Sets the request id and the length; fails if the frame exceeds `max_frame_size`.
    pub fn finish(mut self, id: u32, max_frame_size: usize) -> Result<BytesMut, FrameError> {
        self.buf[7..11].copy_from_slice(&id.to_be_bytes());
        finish_frame(&mut self.buf, 0, max_frame_size)?;
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_declared_length_is_not_reserved_before_its_bytes_arrive() {
        let mut codec = super::FrameCodec::default();
        let mut src = bytes::BytesMut::new();
        // A header claiming a 16 MiB frame, then a few bytes of it.
        src.extend_from_slice(&(16_000_000u32).to_be_bytes());
        src.extend_from_slice(&[1, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(tokio_util::codec::Decoder::decode(&mut codec, &mut src).unwrap().is_none());
        assert!(src.capacity() <= 128 * 1024, "reserved {} bytes for 13 that arrived", src.capacity());
    }

    use super::*;

    fn frames() -> Vec<Frame> {
        let md: Metadata = [("rpc-caller", "tests"), ("k", "ü")].into_iter().collect();
        vec![
            Frame {
                id: 7,
                codec: 5,
                head: Head::Call {
                    service: "Catalog".into(),
                    method: "get".into(),
                    timeout: Some(Duration::from_millis(250)),
                    metadata: md.clone(),
                    oneway: false,
                },
                body: Bytes::from_static(b"\x81\xa2id\x2a"),
            },
            Frame {
                id: 8,
                codec: 4,
                head: Head::Call {
                    service: "S".into(),
                    method: "m".into(),
                    timeout: None,
                    metadata: Metadata::new(),
                    oneway: true,
                },
                body: Bytes::new(),
            },
            Frame { id: 7, codec: 5, head: Head::Reply { metadata: md.clone() }, body: Bytes::from_static(b"x") },
            Frame {
                id: 9,
                codec: 0,
                head: Head::Error { code: Code::Unimplemented, message: "no such method".into(), metadata: md },
                body: Bytes::new(),
            },
            Frame { id: 10, codec: 0, head: Head::Cancel, body: Bytes::new() },
            Frame { id: 0, codec: 0, head: Head::Ping, body: Bytes::from_static(b"12345678") },
            Frame { id: 0, codec: 0, head: Head::Pong, body: Bytes::from_static(b"12345678") },
            Frame {
                id: 41,
                codec: 0,
                head: Head::GoAway { code: Code::Unavailable, message: "draining".into() },
                body: Bytes::new(),
            },
            Frame {
                id: 11,
                codec: 1,
                head: Head::Open {
                    window: 65536,
                    service: "Logs".into(),
                    method: "tail".into(),
                    timeout: Some(Duration::from_secs(3)),
                    metadata: [("k", "v")].into_iter().collect(),
                },
                body: Bytes::from_static(b"\x08\x05"),
            },
            Frame { id: 11, codec: 1, head: Head::Item, body: Bytes::from_static(b"item") },
            Frame { id: 11, codec: 0, head: Head::HalfClose, body: Bytes::new() },
            Frame { id: 11, codec: 0, head: Head::Credit { bytes: 4096 }, body: Bytes::new() },
            Frame {
                id: 11,
                codec: 0,
                head: Head::End { status: None, metadata: [("rows", "3")].into_iter().collect() },
                body: Bytes::new(),
            },
            Frame {
                id: 12,
                codec: 0,
                head: Head::End { status: Some((Code::Internal, "boom".into())), metadata: Metadata::new() },
                body: Bytes::new(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_and_reports_its_length() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for f in frames() {
            let before = buf.len();
            codec.encode(&f, &mut buf).unwrap();
            assert_eq!(buf.len() - before, f.encoded_len(), "{f:?}");
        }
        for f in frames() {
            assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), f);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn the_example_in_protocol_md_is_what_we_write() {
        let frame = Frame {
            id: 7,
            codec: 5,
            head: Head::Call {
                service: "Catalog".into(),
                method: "get".into(),
                timeout: Some(Duration::from_millis(250)),
                metadata: Metadata::new(),
                oneway: false,
            },
            body: Bytes::from_static(&[0x81, 0xA2, 0x69, 0x64, 0x2A]),
        };
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(&frame, &mut buf).unwrap();
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x21, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xD0,
            0x90, 0x07, b'C', b'a', b't', b'a', b'l', b'o', b'g', 0x03, b'g', b'e', b't', 0x00, 0x81, 0xA2, 0x69, 0x64,
            0x2A,
        ];
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn the_stream_item_example_in_protocol_md_is_what_we_write() {
        let frame = Frame { id: 9, codec: 1, head: Head::Item, body: Bytes::from_static(b"\x08\x01\x12\x02hi") };
        let mut buf = BytesMut::new();
        FrameCodec::default().encode(&frame, &mut buf).unwrap();
        let expected: &[u8] = &[0, 0, 0, 0x0D, 0x0A, 0, 1, 0, 0, 0, 9, 0x08, 0x01, 0x12, 0x02, b'h', b'i'];
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn a_built_frame_decodes_like_an_encoded_one() {
        let frame = frames().remove(0);
        let mut builder = FrameBuilder::new(frame.codec, &frame.head, frame.body.len());
        builder.body_mut().put_slice(&frame.body);
        let bytes = builder.finish(frame.id, DEFAULT_MAX_FRAME_SIZE).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(FrameCodec::default().decode(&mut buf).unwrap().unwrap(), frame);
        let mut builder = FrameBuilder::new(frame.codec, &frame.head, 0);
        builder.body_mut().put_slice(&[0; 100]);
        assert!(matches!(builder.finish(1, 50), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn a_reply_put_from_its_parts_decodes_like_an_encoded_one_and_an_oversized_one_is_not_put() {
        let mut metadata = Metadata::new();
        metadata.insert("k", "v");
        let frame = Frame {
            id: 9,
            codec: 3,
            head: Head::Reply { metadata: metadata.clone() },
            body: Bytes::from_static(b"body"),
        };
        let mut buf = BytesMut::from(&b"before"[..]);
        put_reply(&mut buf, 9, 3, &metadata, b"body", DEFAULT_MAX_FRAME_SIZE).unwrap();
        assert_eq!(buf.len(), 6 + frame.encoded_len());
        buf.advance(6);
        assert_eq!(FrameCodec::default().decode(&mut buf).unwrap().unwrap(), frame);
        let mut buf = BytesMut::from(&b"before"[..]);
        assert!(matches!(put_reply(&mut buf, 9, 3, &metadata, &[0; 100], 50), Err(FrameError::TooLarge { .. })));
        assert_eq!(&buf[..], b"before", "nothing of the oversized reply stays");
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut codec = FrameCodec::default();
        let mut whole = BytesMut::new();
        codec.encode(&frames()[0], &mut whole).unwrap();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(codec.decode(&mut part).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xFFu8, 0xFF, 0xFF, 0xF0, 1][..]);
        let cap = buf.capacity();
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), (0xFFFF_FFF0, 1024)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn truncated_headers_are_malformed_not_panics() {
        let mut codec = FrameCodec::default();
        let mut whole = BytesMut::new();
        codec.encode(&frames()[0], &mut whole).unwrap();
        let body_len = 5;
        // Shrink the declared length so the header fields run past the frame's end.
        for len in FIXED_HEADER..whole.len() - 4 - body_len {
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            buf.put_slice(&whole[4..4 + len]);
            match codec.decode(&mut buf) {
                Err(FrameError::Malformed(_)) => {}
                other => panic!("len {len}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_kind_and_flags_are_malformed() {
        let mut codec = FrameCodec::default();
        for (kind, flags) in [(99u8, 0u8), (1, 0x80)] {
            let mut buf = BytesMut::new();
            buf.put_u32(FIXED_HEADER as u32);
            buf.put_slice(&[kind, flags, 0, 0, 0, 0, 1]);
            assert!(matches!(codec.decode(&mut buf), Err(FrameError::Malformed(_))));
        }
    }

    #[test]
    fn preface_checks_magic_and_version() {
        assert!(check_preface(&PREFACE).is_ok());
        let mut other = PREFACE;
        other[4] = 9;
        assert!(check_preface(&other).unwrap_err().to_string().contains("version 9"));
        assert!(check_preface(b"GET / HT").is_err());
    }
}
