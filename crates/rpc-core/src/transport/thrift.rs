//! Apache Thrift's framed transport (`TFramedTransport`) with the binary or compact protocol,
//! so stock Thrift clients can call our server and our client can call stock Thrift servers.
//!
//! A frame is a big-endian `i32` length and a message: a header (method name, message type,
//! sequence id) and a struct (the arguments, the result, or a `TApplicationException`). Our own
//! preface starts with `0xF0`, a negative length, so one port tells the two apart from the first
//! bytes (see `docs/PROTOCOL.md`).

use crate::{Codec, Status};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Message type of a call.
pub(crate) const CALL: u8 = 1;
/// Message type of a reply.
pub(crate) const REPLY: u8 = 2;
/// Message type of an application exception.
pub(crate) const EXCEPTION: u8 = 3;
/// Message type of a one-way call.
pub(crate) const ONEWAY: u8 = 4;

const BINARY_VERSION: [u8; 2] = [0x80, 0x01];
const COMPACT_ID: u8 = 0x82;
const COMPACT_VERSION: u8 = 1;

/// `TApplicationException` types.
const UNKNOWN_METHOD: i32 = 1;
const INTERNAL_ERROR: i32 = 6;
const PROTOCOL_ERROR: i32 = 7;

/// The protocol of a connection whose first eight bytes are `head`, if it is Thrift framed.
pub(crate) fn detect(head: &[u8; 8]) -> Option<Codec> {
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len <= 0 {
        return None;
    }
    match (head[4], head[5]) {
        (0x80, 0x01) => Some(Codec::ThriftBinary),
        (COMPACT_ID, b) if b & 0x1f == COMPACT_VERSION => Some(Codec::ThriftCompact),
        _ => None,
    }
}

/// A message header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MessageHead {
    pub(crate) name: String,
    pub(crate) kind: u8,
    pub(crate) seq: i32,
}

/// Parses the header at the start of `frame`; returns it and where the struct starts.
pub(crate) fn parse_head(codec: Codec, frame: &[u8]) -> Result<(MessageHead, usize), String> {
    let mut rest = frame;
    let (kind, seq, name_len) = if codec == Codec::ThriftCompact {
        if rest.len() < 2 || rest[0] != COMPACT_ID || rest[1] & 0x1f != COMPACT_VERSION {
            return Err("not a compact protocol message header".into());
        }
        let kind = rest[1] >> 5;
        rest = &rest[2..];
        let seq = varint(&mut rest)? as u32 as i32;
        (kind, seq, varint(&mut rest)?)
    } else {
        if rest.len() < 8 || rest[..2] != BINARY_VERSION {
            return Err("not a strict binary protocol message header".into());
        }
        let kind = rest[3];
        rest = &rest[4..];
        let len = rest.get_i32();
        (kind, 0, u64::try_from(len).map_err(|_| format!("negative method name length {len}"))?)
    };
    if name_len > rest.len() as u64 {
        return Err(format!("method name length {name_len} exceeds the {} bytes left", rest.len()));
    }
    let name = std::str::from_utf8(&rest[..name_len as usize]).map_err(|e| format!("method name: {e}"))?.to_owned();
    rest = &rest[name_len as usize..];
    let seq = if codec == Codec::ThriftCompact {
        seq
    } else {
        if rest.len() < 4 {
            return Err("message header ends early".into());
        }
        rest.get_i32()
    };
    Ok((MessageHead { name, kind, seq }, frame.len() - rest.len()))
}

fn varint(rest: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, tail)) = rest.split_first() else { return Err("message header ends early".into()) };
        *rest = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn put_varint(mut value: u64, buf: &mut BytesMut) {
    while value >= 0x80 {
        buf.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// A whole frame: length, header and `body` (an encoded struct).
pub(crate) fn frame(codec: Codec, head: &MessageHead, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(4 + 16 + head.name.len() + body.len());
    buf.put_u32(0);
    if codec == Codec::ThriftCompact {
        buf.put_u8(COMPACT_ID);
        buf.put_u8((head.kind << 5) | COMPACT_VERSION);
        put_varint(u64::from(head.seq as u32), &mut buf);
        put_varint(head.name.len() as u64, &mut buf);
        buf.put_slice(head.name.as_bytes());
    } else {
        buf.put_slice(&BINARY_VERSION);
        buf.put_u8(0);
        buf.put_u8(head.kind);
        buf.put_u32(head.name.len() as u32);
        buf.put_slice(head.name.as_bytes());
        buf.put_i32(head.seq);
    }
    buf.put_slice(body);
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf
}

/// Reads until the length of the next frame is buffered; false on a clean end of stream
/// before it.
pub(crate) async fn read_len<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    while buf.len() < 4 {
        buf.reserve(64);
        if io.read_buf(buf).await? == 0 {
            return match buf.len() {
                0 => Ok(false),
                n => Err(closed_inside(n)),
            };
        }
    }
    Ok(true)
}

/// The length the frame at the front of `buf` declares, once its four bytes are buffered
/// (`None` for a negative one, which [`read_frame`] refuses).
pub(crate) fn declared_len(buf: &[u8]) -> Option<usize> {
    usize::try_from(i32::from_be_bytes(buf.get(..4)?.try_into().ok()?)).ok()
}

/// Reads one frame; its length is checked against `max` before anything is allocated for it.
/// `None` on a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<Option<Bytes>> {
    if !read_len(io, buf).await? {
        return Ok(None);
    }
    let len = declared_len(buf).filter(|&len| len <= max).ok_or_else(|| {
        let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        invalid_data(format!("Thrift frame length {declared} is negative or over {max}"))
    })?;
    while buf.len() < 4 + len {
        // Grow with the bytes that arrive, not with the declared length.
        buf.reserve((4 + len - buf.len()).min(64 * 1024));
        if io.read_buf(buf).await? == 0 {
            return Err(closed_inside(buf.len()));
        }
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// The error of a connection that closed with `pending` bytes of a frame read.
fn closed_inside(pending: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("connection closed inside a Thrift frame ({pending} bytes pending)"),
    )
}

fn invalid_data(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Apache Thrift's `TApplicationException`: how a stock peer reports a failed call.
#[crate::message]
struct ApplicationException {
    message: String,
    kind: i32,
}

/// The body of the exception a [`Status`] becomes.
pub(crate) fn exception_body(codec: Codec, status: &Status) -> BytesMut {
    let kind = match status.code() {
        crate::Code::Unimplemented => UNKNOWN_METHOD,
        crate::Code::InvalidArgument | crate::Code::Protocol => PROTOCOL_ERROR,
        _ => INTERNAL_ERROR,
    };
    let exception = ApplicationException { message: format!("{}: {}", status.code(), status.message()), kind };
    let mut body = BytesMut::new();
    // A struct of a string and an i32 always encodes.
    let _ = codec.encode(&exception, &mut body);
    body
}

/// The [`Status`] an exception from a stock peer becomes.
pub(crate) fn exception_status(codec: Codec, body: &[u8]) -> Status {
    match codec.decode::<ApplicationException>(body) {
        Ok(e) if e.kind == UNKNOWN_METHOD => Status::unimplemented(e.message),
        Ok(e) if e.kind == PROTOCOL_ERROR => Status::invalid_argument(e.message),
        Ok(e) => {
            match e.message.split_once(": ").and_then(|(name, rest)| Some((crate::Code::from_name(name)?, rest))) {
                // Our servers write "CODE: message" (see `exception_body`): keep the code.
                Some((code, message)) => Status::new(code, message),
                None => Status::internal(format!("Thrift application exception {}: {}", e.kind, e.message)),
            }
        }
        Err(e) => Status::protocol(format!("undecodable Thrift application exception: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_both_protocols_and_are_detected() {
        for codec in [Codec::ThriftBinary, Codec::ThriftCompact] {
            let head = MessageHead { name: "get".into(), kind: CALL, seq: -7 };
            let framed = frame(codec, &head, &[0]);
            let first: [u8; 8] = framed[..8].try_into().unwrap();
            assert_eq!(detect(&first), Some(codec));
            let (parsed, at) = parse_head(codec, &framed[4..]).unwrap();
            assert_eq!(parsed, head);
            assert_eq!(&framed[4 + at..], [0]);
            for cut in 0..at {
                assert!(parse_head(codec, &framed[4..4 + cut]).is_err(), "{codec} cut at {cut}");
            }
        }
        assert_eq!(detect(&crate::transport::PREFACE), None);
    }

    #[test]
    fn a_lying_name_length_is_an_error() {
        let bytes = [0x80, 0x01, 0, 1, 0x7f, 0xff, 0xff, 0xff, b'a'];
        assert!(parse_head(Codec::ThriftBinary, &bytes).unwrap_err().contains("exceeds"));
        let bytes = [COMPACT_ID, 0x21, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(parse_head(Codec::ThriftCompact, &bytes).unwrap_err().contains("exceeds"));
    }
}
