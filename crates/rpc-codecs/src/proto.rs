//! Protobuf encoding helpers over `prost`'s wire primitives (varints, keys, field skipping).
//!
//! Every read checks a declared length against the bytes that are left before it slices, so
//! nothing is allocated for bytes that are not there.

use crate::schema::{ProtoResult, Schema, Single};
use crate::{Codec, CodecError, CodecErrorKind, MAX_DEPTH};
use bytes::BytesMut;
use prost::encoding::{self as pe, DecodeContext, WireType};

/// A protobuf decode error; cold, so the checks that call it stay small enough to inline.
#[cold]
#[inline(never)]
pub(crate) fn error(message: impl Into<String>) -> Box<CodecError> {
    Box::new(CodecError::new(Some(Codec::Protobuf), CodecErrorKind::Decode, message))
}

#[cold]
#[inline(never)]
fn from_prost(e: prost::DecodeError) -> Box<CodecError> {
    error(e.to_string())
}

/// Reads a field key.
#[inline]
pub fn read_key(buf: &mut &[u8]) -> ProtoResult<(u32, WireType)> {
    pe::decode_key(buf).map_err(from_prost)
}

/// Skips an unknown field.
pub fn skip(wire: WireType, tag: u32, buf: &mut &[u8]) -> ProtoResult<()> {
    pe::skip_field(wire, tag, buf, DecodeContext::default()).map_err(from_prost)
}

pub(crate) fn skip_all<T: Default>(buf: &mut &[u8]) -> ProtoResult<T> {
    while !buf.is_empty() {
        let (tag, wire) = read_key(buf)?;
        skip(wire, tag, buf)?;
    }
    Ok(T::default())
}

#[inline]
pub(crate) fn read_varint(buf: &mut &[u8]) -> ProtoResult<u64> {
    pe::decode_varint(buf).map_err(from_prost)
}

#[inline]
pub(crate) fn check_wire(expected: WireType, actual: WireType) -> ProtoResult<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(wire_error(expected, actual))
    }
}

#[cold]
#[inline(never)]
fn wire_error(expected: WireType, actual: WireType) -> Box<CodecError> {
    error(format!("wire type {actual:?} where {expected:?} was expected"))
}

/// One level deeper, or an error past [`MAX_DEPTH`].
#[inline]
pub(crate) fn deeper(depth: usize) -> ProtoResult<usize> {
    if depth >= MAX_DEPTH {
        Err(error(format!("messages nested deeper than {MAX_DEPTH} levels")))
    } else {
        Ok(depth + 1)
    }
}

/// Reads a length prefix and returns that many bytes, checking they are there first.
#[inline]
pub(crate) fn read_len_delimited<'a>(buf: &mut &'a [u8]) -> ProtoResult<&'a [u8]> {
    let len = read_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(error(format!("declared length {len} exceeds the {} bytes left", buf.len())));
    }
    let (value, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(value)
}

#[inline]
pub(crate) fn bytes_value(bytes: &[u8], buf: &mut BytesMut) {
    pe::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

#[inline]
pub(crate) fn bytes_value_len(bytes: &[u8]) -> usize {
    pe::encoded_len_varint(bytes.len() as u64) + bytes.len()
}

/// The decoded value of a field, its absent value, or a "missing field" error.
pub fn finish<T: Schema>(slot: Option<T>, field: &str) -> ProtoResult<T> {
    slot.or_else(T::absent).ok_or_else(|| error(format!("{field} is missing")))
}

/// Decodes a wrapper message whose field 1 is the value.
pub(crate) fn decode_wrapper<T: Schema>(buf: &mut &[u8], depth: usize) -> ProtoResult<T> {
    let mut slot = None;
    while !buf.is_empty() {
        match read_key(buf)? {
            (1, wire) => T::proto_merge(&mut slot, wire, buf, depth)?,
            (tag, wire) => skip(wire, tag, buf)?,
        }
    }
    finish(slot, "wrapper.value")
}

pub(crate) fn list<T: Single>(list: &[T], tag: u32, buf: &mut BytesMut) {
    if list.is_empty() {
        return;
    }
    if T::PROTO_PACKED {
        pe::encode_key(tag, WireType::LengthDelimited, buf);
        pe::encode_varint(list.iter().map(Single::proto_value_len).sum::<usize>() as u64, buf);
        for value in list {
            value.proto_value(buf);
        }
    } else {
        for value in list {
            pe::encode_key(tag, T::PROTO_WIRE, buf);
            value.proto_value(buf);
        }
    }
}

pub(crate) fn list_len<T: Single>(list: &[T], tag: u32) -> usize {
    if list.is_empty() {
        return 0;
    }
    let values: usize = list.iter().map(Single::proto_value_len).sum();
    if T::PROTO_PACKED {
        pe::key_len(tag) + pe::encoded_len_varint(values as u64) + values
    } else {
        pe::key_len(tag) * list.len() + values
    }
}

pub(crate) fn list_merge<T: Single>(
    list: &mut Vec<T>,
    wire: WireType,
    buf: &mut &[u8],
    depth: usize,
) -> ProtoResult<()> {
    if T::PROTO_PACKED && wire == WireType::LengthDelimited {
        let mut packed = read_len_delimited(buf)?;
        // The count is known from bytes that are already here: no regrowing, and no allocation
        // larger than the input.
        list.reserve(match T::PROTO_WIRE {
            WireType::SixtyFourBit => packed.len() / 8,
            WireType::ThirtyTwoBit => packed.len() / 4,
            // Each varint ends with the one byte of it below 0x80.
            _ => packed.iter().filter(|&&b| b < 0x80).count(),
        });
        while !packed.is_empty() {
            list.push(T::proto_read(T::PROTO_WIRE, &mut packed, depth)?);
        }
    } else {
        list.push(T::proto_read(wire, buf, depth)?);
    }
    Ok(())
}

pub(crate) fn map_entry<K: Single, V: Single>(k: &K, v: &V, tag: u32, buf: &mut BytesMut) {
    pe::encode_key(tag, WireType::LengthDelimited, buf);
    pe::encode_varint((crate::schema::single_field_len(k, 1) + crate::schema::single_field_len(v, 2)) as u64, buf);
    crate::schema::single_field(k, 1, buf);
    crate::schema::single_field(v, 2, buf);
}

pub(crate) fn map_entry_len<K: Single, V: Single>(k: &K, v: &V, tag: u32) -> usize {
    let len = crate::schema::single_field_len(k, 1) + crate::schema::single_field_len(v, 2);
    pe::key_len(tag) + pe::encoded_len_varint(len as u64) + len
}

pub(crate) fn read_map_entry<K: Single, V: Single>(
    wire: WireType,
    buf: &mut &[u8],
    depth: usize,
) -> ProtoResult<(K, V)> {
    check_wire(WireType::LengthDelimited, wire)?;
    let mut entry = read_len_delimited(buf)?;
    let depth = deeper(depth)?;
    let (mut k, mut v) = (None, None);
    while !entry.is_empty() {
        match read_key(&mut entry)? {
            (1, wire) => k = Some(K::proto_read(wire, &mut entry, depth)?),
            (2, wire) => v = Some(V::proto_read(wire, &mut entry, depth)?),
            (tag, wire) => skip(wire, tag, &mut entry)?,
        }
    }
    Ok((finish(k, "map entry.key")?, finish(v, "map entry.value")?))
}
