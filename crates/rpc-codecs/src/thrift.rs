//! Thrift encoding helpers over the `thrift` crate's binary and compact protocols.
//!
//! The crate's input protocols allocate a buffer of a string's declared length before reading
//! it, so decoding goes through [`Guarded`], which reads strings and binaries itself, straight
//! from the input, once their declared length is known to fit.

use crate::schema::{Schema, Single, ThriftResult};
use crate::{Codec, CodecError, CodecErrorKind, Role, MAX_DEPTH};
use bytes::{BufMut, BytesMut};
use std::cell::Cell;
use std::io::Read;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TFieldIdentifier,
    TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier, TOutputProtocol, TSetIdentifier,
    TStructIdentifier, TType,
};
use thrift::{ProtocolError, ProtocolErrorKind};

/// A Thrift scalar: how it is written.
pub(crate) trait Scalar {
    fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()>;
}

pub(crate) fn write_scalar<T: Scalar, P: TOutputProtocol + ?Sized>(value: &T, o: &mut P) -> ThriftResult<()> {
    value.write(o)
}

pub(crate) fn invalid(message: impl Into<String>) -> thrift::Error {
    thrift::Error::Protocol(ProtocolError::new(ProtocolErrorKind::InvalidData, message.into()))
}

/// A wider wire integer narrowed to the field's type, or an error if it does not fit.
pub(crate) fn narrow<W: Copy + std::fmt::Display, T: TryFrom<W>>(raw: W) -> ThriftResult<T> {
    T::try_from(raw).map_err(|_| invalid(format!("{raw} does not fit in {}", std::any::type_name::<T>())))
}

pub(crate) fn deeper(depth: usize) -> ThriftResult<usize> {
    if depth >= MAX_DEPTH {
        Err(thrift::Error::Protocol(ProtocolError::new(
            ProtocolErrorKind::DepthLimit,
            format!("structs nested deeper than {MAX_DEPTH} levels"),
        )))
    } else {
        Ok(depth + 1)
    }
}

/// The header of a struct; binary and compact protocols do not send its name.
pub fn struct_header() -> TStructIdentifier {
    TStructIdentifier { name: String::new() }
}

/// The header of field `id` of type `ty`; names are not sent either.
pub fn field_header(ty: TType, id: i16) -> TFieldIdentifier {
    TFieldIdentifier { name: None, field_type: ty, id: Some(id) }
}

/// The decoded value of a field, its absent value, or a "missing field" error.
pub fn finish<T: Schema>(slot: Option<T>, field: &str) -> ThriftResult<T> {
    slot.or_else(T::absent).ok_or_else(|| invalid(format!("{field} is missing")))
}

pub(crate) fn write_field<T: Schema, P: TOutputProtocol + ?Sized>(value: &T, id: i16, o: &mut P) -> ThriftResult<()> {
    if value.thrift_present() {
        o.write_field_begin(&field_header(T::THRIFT_TYPE, id))?;
        value.thrift_write(o)?;
        o.write_field_end()?;
    }
    Ok(())
}

pub(crate) fn write_empty<P: TOutputProtocol + ?Sized>(o: &mut P) -> ThriftResult<()> {
    o.write_struct_begin(&struct_header())?;
    o.write_field_stop()?;
    o.write_struct_end()
}

/// A value outside a struct travels as field 0 of a wrapper, like a method's `success`.
pub(crate) fn write_wrapper<T: Schema, P: TOutputProtocol + ?Sized>(value: &T, o: &mut P) -> ThriftResult<()> {
    write_wrapped(value, 0, o)
}

/// A struct whose only field is `value`, with id `id`.
pub(crate) fn write_wrapped<T: Schema, P: TOutputProtocol + ?Sized>(value: &T, id: i16, o: &mut P) -> ThriftResult<()> {
    o.write_struct_begin(&struct_header())?;
    write_field(value, id, o)?;
    o.write_field_stop()?;
    o.write_struct_end()
}

pub(crate) fn read_wrapper<T: Schema, P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<T> {
    read_wrapped(i, depth, 0, "result.success")
}

/// Reads what [`write_wrapped`] wrote; `field` names the field in errors.
pub(crate) fn read_wrapped<T: Schema, P: TInputProtocol + ?Sized>(
    i: &mut P,
    depth: usize,
    id: i16,
    field: &str,
) -> ThriftResult<T> {
    let mut slot = None;
    i.read_struct_begin()?;
    loop {
        let header = i.read_field_begin()?;
        match (header.field_type, header.id) {
            (TType::Stop, _) => break,
            (t, Some(n)) if n == id && t == T::THRIFT_TYPE => T::thrift_merge(&mut slot, i, depth)?,
            (t, _) => i.skip(t)?,
        }
        i.read_field_end()?;
    }
    i.read_struct_end()?;
    finish(slot, field)
}

fn size(n: usize) -> ThriftResult<i32> {
    i32::try_from(n).map_err(|_| invalid(format!("{n} elements are more than Thrift can count")))
}

pub(crate) fn write_list<T: Single, P: TOutputProtocol + ?Sized>(list: &[T], o: &mut P) -> ThriftResult<()> {
    o.write_list_begin(&TListIdentifier::new(T::THRIFT_TYPE, size(list.len())?))?;
    for value in list {
        value.thrift_write(o)?;
    }
    o.write_list_end()
}

/// Preallocation for a declared element count, which is untrusted: never more than this.
const MAX_PREALLOC: usize = 1024;

fn count(declared: i32) -> ThriftResult<usize> {
    usize::try_from(declared).map_err(|_| invalid(format!("negative element count {declared}")))
}

pub(crate) fn read_list<T: Single, P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Vec<T>> {
    let depth = deeper(depth)?;
    let header = i.read_list_begin()?;
    let n = count(header.size)?;
    if n > 0 && header.element_type != T::THRIFT_TYPE {
        return Err(invalid(format!("list of {:?} where {:?} was expected", header.element_type, T::THRIFT_TYPE)));
    }
    let mut list = Vec::with_capacity(n.min(MAX_PREALLOC));
    for _ in 0..n {
        list.push(T::thrift_read(i, depth)?);
    }
    i.read_list_end()?;
    Ok(list)
}

pub(crate) fn write_map<'a, K: Single + 'a, V: Single + 'a, P: TOutputProtocol + ?Sized>(
    len: usize,
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    o: &mut P,
) -> ThriftResult<()> {
    o.write_map_begin(&TMapIdentifier::new(K::THRIFT_TYPE, V::THRIFT_TYPE, size(len)?))?;
    for (k, v) in entries {
        k.thrift_write(o)?;
        v.thrift_write(o)?;
    }
    o.write_map_end()
}

pub(crate) fn read_map<K: Single, V: Single, P: TInputProtocol + ?Sized>(
    i: &mut P,
    depth: usize,
    mut insert: impl FnMut(K, V),
) -> ThriftResult<()> {
    let depth = deeper(depth)?;
    let header = i.read_map_begin()?;
    let n = count(header.size)?;
    if n > 0 && (header.key_type != Some(K::THRIFT_TYPE) || header.value_type != Some(V::THRIFT_TYPE)) {
        return Err(invalid(format!(
            "map of {:?} to {:?} where {:?} to {:?} was expected",
            header.key_type,
            header.value_type,
            K::THRIFT_TYPE,
            V::THRIFT_TYPE
        )));
    }
    for _ in 0..n {
        let k = K::thrift_read(i, depth)?;
        let v = V::thrift_read(i, depth)?;
        insert(k, v);
    }
    i.read_map_end()
}

/// Encodes `value` with the binary (`compact == false`) or compact protocol.
pub(crate) fn encode<T: Schema>(value: &T, codec: Codec, role: Role, buf: &mut BytesMut) -> Result<(), CodecError> {
    let writer = buf.writer();
    let result = if codec == Codec::ThriftCompact {
        write(value, role, &mut TCompactOutputProtocol::new(writer))
    } else {
        write(value, role, &mut TBinaryOutputProtocol::new(writer, true))
    };
    result.map_err(|e| CodecError::new(Some(codec), CodecErrorKind::Encode, describe(e)))
}

fn write<T: Schema, P: TOutputProtocol>(value: &T, role: Role, o: &mut P) -> ThriftResult<()> {
    match role {
        Role::Message => value.thrift_write_message(o),
        Role::Reply => value.thrift_write_reply(o),
    }
}

/// Decodes a whole body; trailing bytes are an error.
pub(crate) fn decode<T: Schema>(codec: Codec, role: Role, bytes: &[u8]) -> Result<T, CodecError> {
    if codec == Codec::ThriftCompact {
        let pos = Cell::new(0);
        read_all(codec, role, Guarded::new(CompactInput::new(bytes, &pos)))
    } else {
        read_all(codec, role, Guarded::new(TBinaryInputProtocol::new(bytes, true)))
    }
}

/// Reads a body and checks that nothing trails it. The value moves once, straight into the
/// result: mapping the error first copied it through a second `Result`, which cost small
/// messages about 15% in stalled copies.
fn read_all<T: Schema, S: SliceInput>(codec: Codec, role: Role, mut input: Guarded<S>) -> Result<T, CodecError> {
    let error = |m: String| CodecError::new(Some(codec), CodecErrorKind::Decode, m);
    match read(role, &mut input) {
        Ok(value) => match input.input.unread().len() {
            0 => Ok(value),
            n => Err(error(format!("{n} trailing bytes after the message"))),
        },
        Err(e) => Err(error(describe(e))),
    }
}

fn read<T: Schema, P: TInputProtocol>(role: Role, i: &mut P) -> ThriftResult<T> {
    match role {
        Role::Message => T::thrift_read_message(i, 0),
        Role::Reply => T::thrift_read_reply(i, 0),
    }
}

/// The thrift crate's `Display` shows only the error's kind; the message says what was wrong.
fn describe(e: thrift::Error) -> String {
    match e {
        thrift::Error::Transport(e) if e.kind == thrift::TransportErrorKind::EndOfFile => {
            "input ends before the message does".to_owned()
        }
        thrift::Error::Transport(e) => e.message,
        thrift::Error::Protocol(e) => e.message,
        thrift::Error::Application(e) => e.message,
        thrift::Error::User(e) => e.to_string(),
    }
}

/// A slice reader whose position [`CompactInput`] can see; the compact protocol keeps its
/// transport private.
pub(crate) struct Input<'a> {
    data: &'a [u8],
    pos: &'a Cell<usize>,
}

impl Read for Input<'_> {
    #[inline]
    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let start = self.pos.get();
        // Compact varints are read a byte at a time.
        if let ([one], Some(&byte)) = (&mut *out, self.data.get(start)) {
            *one = byte;
            self.pos.set(start + 1);
            return Ok(());
        }
        match self.data.get(start..start + out.len()) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                self.pos.set(start + out.len());
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    #[inline]
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let start = self.pos.get();
        if let ([one], Some(&byte)) = (&mut *out, self.data.get(start)) {
            *one = byte;
            self.pos.set(start + 1);
            return Ok(1);
        }
        let n = out.len().min(self.data.len() - start);
        out[..n].copy_from_slice(&self.data[start..start + n]);
        self.pos.set(start + n);
        Ok(n)
    }
}

/// The compact protocol over a slice, with the unread part of the slice in view.
///
/// The protocol adds a short field header's delta to the previous field id unchecked, which
/// overflows `i16` (a panic in debug builds) on hostile input such as field 32767 followed by
/// a delta. So this mirrors the previous id, exactly where it could overflow, and refuses such
/// a header first. A valid writer never sends one: it uses a delta only to reach a higher id.
pub(crate) struct CompactInput<'a> {
    protocol: TCompactInputProtocol<Input<'a>>,
    data: &'a [u8],
    pos: &'a Cell<usize>,
    /// The previous field id in the current struct, or 0 standing in for any id a delta
    /// cannot overflow (it is exact again after the next field).
    last_field: i16,
    depth: usize,
    /// Enclosing structs, by depth, whose previous field id a delta could overflow.
    enclosing_high: Vec<(usize, i16)>,
}

impl<'a> CompactInput<'a> {
    fn new(data: &'a [u8], pos: &'a Cell<usize>) -> Self {
        let protocol = TCompactInputProtocol::new(Input { data, pos });
        CompactInput { protocol, data, pos, last_field: 0, depth: 0, enclosing_high: Vec::new() }
    }
}

/// Field ids from which a delta (at most 15) can overflow `i16`.
const HIGH_FIELD_ID: i16 = i16::MAX - 15;

/// A Thrift input protocol reading a slice, whose unread part [`Guarded`] can see and take.
pub(crate) trait SliceInput {
    /// The protocol that reads everything but strings and binaries.
    type Protocol: TInputProtocol;
    /// Whether lengths are varints (compact) rather than big-endian `i32`s (binary).
    const VARINT_LENGTHS: bool;
    fn protocol(&mut self) -> &mut Self::Protocol;
    fn unread(&self) -> &[u8];
    fn consume(&mut self, n: usize);

    #[inline]
    fn read_struct_begin(&mut self) -> ThriftResult<Option<TStructIdentifier>> {
        self.protocol().read_struct_begin()
    }
    #[inline]
    fn read_struct_end(&mut self) -> ThriftResult<()> {
        self.protocol().read_struct_end()
    }
    #[inline]
    fn read_field_begin(&mut self) -> ThriftResult<TFieldIdentifier> {
        self.protocol().read_field_begin()
    }
}

impl SliceInput for TBinaryInputProtocol<&[u8]> {
    type Protocol = Self;
    const VARINT_LENGTHS: bool = false;

    #[inline]
    fn protocol(&mut self) -> &mut Self {
        self
    }

    #[inline]
    fn unread(&self) -> &[u8] {
        self.transport
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.transport = &self.transport[n..];
    }
}

impl<'a> SliceInput for CompactInput<'a> {
    type Protocol = TCompactInputProtocol<Input<'a>>;
    const VARINT_LENGTHS: bool = true;

    #[inline]
    fn protocol(&mut self) -> &mut Self::Protocol {
        &mut self.protocol
    }

    #[inline]
    fn unread(&self) -> &[u8] {
        &self.data[self.pos.get()..]
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.pos.set(self.pos.get() + n);
    }

    #[inline]
    fn read_struct_begin(&mut self) -> ThriftResult<Option<TStructIdentifier>> {
        if self.last_field > HIGH_FIELD_ID {
            self.enclosing_high.push((self.depth, self.last_field));
        }
        self.depth += 1;
        self.last_field = 0;
        self.protocol.read_struct_begin()
    }

    #[inline]
    fn read_struct_end(&mut self) -> ThriftResult<()> {
        self.depth = self.depth.saturating_sub(1);
        self.last_field = match self.enclosing_high.last() {
            Some(&(depth, id)) if depth == self.depth => {
                self.enclosing_high.pop();
                id
            }
            _ => 0,
        };
        self.protocol.read_struct_end()
    }

    #[inline]
    fn read_field_begin(&mut self) -> ThriftResult<TFieldIdentifier> {
        if let Some(&header) = self.unread().first() {
            let delta = i16::from(header >> 4);
            if header & 0x0f != 0 && delta != 0 && self.last_field > i16::MAX - delta {
                return Err(invalid(format!("field id {} plus delta {delta} overflows", self.last_field)));
            }
        }
        // Inspected in place: unpacking and rewrapping the result costs a stalled copy.
        let field = self.protocol.read_field_begin();
        if let Ok(TFieldIdentifier { id: Some(id), .. }) = &field {
            self.last_field = *id;
        }
        field
    }
}

/// An input protocol that reads strings and binaries itself, once their declared length is
/// known to fit in the input; the wrapped protocol would allocate a zero-filled buffer of the
/// declared length first.
pub(crate) struct Guarded<S> {
    input: S,
    /// Elements that declared counts may still claim in this decode. Every element (of a
    /// list, set or map, at any depth) starts at a byte of its own, so truthful counts never
    /// claim more than the input's length in total; nested lying ones run out.
    elements_left: u64,
}

impl<S: SliceInput> Guarded<S> {
    fn new(input: S) -> Self {
        let elements_left = input.unread().len() as u64;
        Guarded { input, elements_left }
    }

    /// Applies `take` to the bytes of a length-prefixed string or binary, then consumes them.
    #[inline]
    fn read_prefixed<T>(&mut self, take: impl FnOnce(&[u8]) -> ThriftResult<T>) -> ThriftResult<T> {
        let rest = self.input.unread();
        let (declared, header) = if S::VARINT_LENGTHS {
            peek_varint(rest)?
        } else {
            let Some(prefix) = rest.first_chunk::<4>() else { return Err(eof()) };
            let declared = i32::from_be_bytes(*prefix);
            (u64::try_from(declared).map_err(|_| invalid(format!("negative length {declared}")))?, 4)
        };
        let left = &rest[header..];
        let Some(bytes) = usize::try_from(declared).ok().and_then(|n| left.get(..n)) else {
            return Err(invalid(format!("declared length {declared} exceeds the {} bytes left", left.len())));
        };
        let (value, taken) = (take(bytes)?, header + bytes.len());
        self.input.consume(taken);
        Ok(value)
    }

    /// Refuses a declared element count that the bytes left cannot hold, each element taking
    /// at least `min_bytes`, or that the decode's element budget cannot: what a reader
    /// preallocates for a count is then backed by input, in total over every nesting level.
    #[inline]
    fn check_count(&mut self, declared: i32, min_bytes: u64) -> ThriftResult<()> {
        let left = self.input.unread().len();
        let n = u64::try_from(declared).map_err(|_| invalid(format!("negative element count {declared}")))?;
        let claimed = n.saturating_mul(min_bytes);
        if claimed > left as u64 {
            return Err(invalid(format!("{n} elements declared but only {left} bytes left")));
        }
        if claimed > self.elements_left {
            return Err(invalid(format!("{n} more elements declared than the input holds")));
        }
        self.elements_left -= claimed;
        Ok(())
    }
}

fn eof() -> thrift::Error {
    thrift::Error::Transport(thrift::TransportError::new(thrift::TransportErrorKind::EndOfFile, "input ends early"))
}

/// A varint at the start of `rest` and the bytes it takes.
fn peek_varint(rest: &[u8]) -> ThriftResult<(u64, usize)> {
    let mut value = 0u64;
    for (n, byte) in rest.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * n);
        if byte & 0x80 == 0 {
            return Ok((value, n + 1));
        }
    }
    Err(if rest.len() < 10 { eof() } else { invalid("varint longer than 10 bytes") })
}

impl<S: SliceInput> TInputProtocol for Guarded<S> {
    fn read_message_begin(&mut self) -> ThriftResult<TMessageIdentifier> {
        self.input.protocol().read_message_begin()
    }
    fn read_message_end(&mut self) -> ThriftResult<()> {
        self.input.protocol().read_message_end()
    }
    fn read_struct_begin(&mut self) -> ThriftResult<Option<TStructIdentifier>> {
        self.input.read_struct_begin()
    }
    fn read_struct_end(&mut self) -> ThriftResult<()> {
        self.input.read_struct_end()
    }
    fn read_field_begin(&mut self) -> ThriftResult<TFieldIdentifier> {
        self.input.read_field_begin()
    }
    fn read_field_end(&mut self) -> ThriftResult<()> {
        self.input.protocol().read_field_end()
    }
    fn read_bool(&mut self) -> ThriftResult<bool> {
        self.input.protocol().read_bool()
    }
    fn read_bytes(&mut self) -> ThriftResult<Vec<u8>> {
        self.read_prefixed(|bytes| Ok(bytes.to_vec()))
    }
    fn read_i8(&mut self) -> ThriftResult<i8> {
        self.input.protocol().read_i8()
    }
    fn read_i16(&mut self) -> ThriftResult<i16> {
        self.input.protocol().read_i16()
    }
    fn read_i32(&mut self) -> ThriftResult<i32> {
        self.input.protocol().read_i32()
    }
    fn read_i64(&mut self) -> ThriftResult<i64> {
        self.input.protocol().read_i64()
    }
    fn read_double(&mut self) -> ThriftResult<f64> {
        self.input.protocol().read_double()
    }
    fn read_string(&mut self) -> ThriftResult<String> {
        self.read_prefixed(|bytes| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|e| invalid(format!("invalid UTF-8 in a string: {e}")))
        })
    }
    fn read_list_begin(&mut self) -> ThriftResult<TListIdentifier> {
        let header = self.input.protocol().read_list_begin();
        if let Ok(h) = &header {
            self.check_count(h.size, 1)?;
        }
        header
    }
    fn read_list_end(&mut self) -> ThriftResult<()> {
        self.input.protocol().read_list_end()
    }
    fn read_set_begin(&mut self) -> ThriftResult<TSetIdentifier> {
        let header = self.input.protocol().read_set_begin();
        if let Ok(h) = &header {
            self.check_count(h.size, 1)?;
        }
        header
    }
    fn read_set_end(&mut self) -> ThriftResult<()> {
        self.input.protocol().read_set_end()
    }
    fn read_map_begin(&mut self) -> ThriftResult<TMapIdentifier> {
        let header = self.input.protocol().read_map_begin();
        if let Ok(h) = &header {
            self.check_count(h.size, 2)?;
        }
        header
    }
    fn read_map_end(&mut self) -> ThriftResult<()> {
        self.input.protocol().read_map_end()
    }
    fn read_byte(&mut self) -> ThriftResult<u8> {
        self.input.protocol().read_byte()
    }
}
