//! The schema traits behind the Protobuf and Thrift codecs, and their impls for std types.
//!
//! JSON and MessagePack need only `serde`. Protobuf and Thrift need field numbers and wire types,
//! which [`Schema`] provides: `#[rpc_core::message]` implements it for structs and enums, and
//! this module implements it for the std types a field may have. Generated code calls the
//! helper functions here; users rarely need to.
//!
//! | Rust | protobuf (proto3) | Thrift |
//! |---|---|---|
//! | `bool` | `bool` | `bool` |
//! | `i8`, `i16`, `i32` | `int32` | `i8`, `i16`, `i32` |
//! | `i64` | `int64` | `i64` |
//! | `u8`, `u16`, `u32` | `uint32` | `i16`, `i32`, `i64` (widened: Thrift has no unsigned types) |
//! | `u64` | `uint64` | `i64`, same bits (values above `i64::MAX` read as negative by peers) |
//! | `f32`, `f64` | `float`, `double` | `double` (Thrift has no 32-bit float) |
//! | `String` | `string` | `string` |
//! | `Vec<u8>`, `bytes::Bytes` | `bytes` | `binary` |
//! | `Vec<T>` | `repeated T` (packed for numbers) | `list<T>` |
//! | `HashMap<K, V>`, `BTreeMap<K, V>` | `map<K, V>` | `map<K, V>` |
//! | `Option<T>` | `optional T` | `optional T` |
//! | `Box<T>` | `T` | `T` |
//! | `()` | empty message | empty struct |
//! | `Result<T, E>` | message: `success = 1`, `error = 2` | struct: `success` id 0, `error` id 1 |
//!
//! Thrift can only throw an `exception`, which is a struct. An error type that is not a struct
//! (`Result<T, String>`, an enum, a union) travels as field 1 of an exception with one field,
//! `1: E value`, named after the type (`Error_string`), which the emitted `.thrift` declares.
//!
//! In MessagePack, `bytes::Bytes` anywhere and `Vec<u8>` as a field or an optional field are
//! `bin` byte strings; a `Vec<u8>` deeper inside (`Vec<Vec<u8>>`, a map's value) is a list of
//! numbers, as serde writes it: use `Bytes` there for `bin`.
//!
//! In JSON, a non-finite `f32` or `f64` field (alone, optional or in a list) is the string
//! `"NaN"`, `"Infinity"` or `"-Infinity"`, as in proto3's JSON mapping; MessagePack keeps its
//! native floats.
//!
//! Protobuf input may repeat a field, as concatenated encodings do: the last scalar wins, lists
//! extend, and a message field merges into the one read before (a oneof is replaced whole).
//!
//! A method returning `Option<T>` declares `T` in the `.thrift`, which has no null result: a
//! stock Thrift client reads `None` as a missing result (`MISSING_RESULT`).
//!
//! A narrower integer decoded from a wider wire value that does not fit is a decode error, not
//! a truncation. Lists of lists, optional lists and lists of options have no protobuf encoding,
//! so they do not implement [`Single`] and are rejected at compile time; wrap the inner value in
//! a `#[message]` struct.

use crate::{proto, thrift as th, CodecError};
use bytes::{BufMut, Bytes};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub use crate::idl::{FieldDef, Idl, MethodDef, TypeRef};
pub use ::thrift::protocol::{TInputProtocol, TOutputProtocol, TType};
pub use ::thrift::Result as ThriftResult;
pub use bytes::BytesMut;
pub use prost::encoding::WireType;
pub use proto::{finish as proto_finish, read_key as proto_read_key, skip as proto_skip};
pub use th::{field_header as thrift_field, finish as thrift_finish, struct_header as thrift_struct};

/// Result of a protobuf decoding step; the error is boxed so the `Ok` path, taken once per
/// value, moves little.
pub type ProtoResult<T> = Result<T, Box<CodecError>>;

/// A type that can be a field of a message in the Protobuf and Thrift codecs.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported #[message] field type",
    label = "the protobuf and thrift codecs cannot encode this type",
    note = "supported: bool, integers, f32, f64, String, Vec<u8>, bytes::Bytes, Vec<T>, HashMap, BTreeMap, Option<T>, Box<T>, (), Result<T, E> and #[rpc_core::message] types"
)]
pub trait Schema: Sized {
    /// Appends the field with number `tag` (nothing when proto3 leaves it implicit).
    fn proto_field(&self, tag: u32, buf: &mut BytesMut);
    /// Bytes [`Schema::proto_field`] appends.
    fn proto_field_len(&self, tag: u32) -> usize;
    /// Reads one occurrence of the field into `slot` (repeated fields append).
    fn proto_merge(slot: &mut Option<Self>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()>;
    /// The value of a field that is absent from the input; `None` when it is required.
    #[inline]
    fn absent() -> Option<Self> {
        None
    }

    /// The Thrift type of the field.
    const THRIFT_TYPE: TType;
    /// Whether Thrift can declare the type an `exception` (a struct with fields: generated
    /// structs and tuples), so a method throws it as it is. Any other error type travels
    /// wrapped in a one-field exception (see [`Idl::exception_wrapper`]).
    const THRIFT_EXCEPTION: bool = false;
    /// Whether the field is written at all (`None` options are not).
    fn thrift_present(&self) -> bool {
        true
    }
    /// Writes the value (without field header).
    fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()>;
    /// Reads one value of the field into `slot`.
    fn thrift_merge<P: TInputProtocol + ?Sized>(slot: &mut Option<Self>, i: &mut P, depth: usize) -> ThriftResult<()>;

    /// Encodes a whole protobuf body: structs are themselves, other values field 1 of a wrapper.
    #[inline]
    fn proto_encode_message(&self, buf: &mut BytesMut) {
        self.proto_field(1, buf)
    }
    /// Decodes what [`Schema::proto_encode_message`] wrote.
    #[inline]
    fn proto_decode_message(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        proto::decode_wrapper(buf, depth)
    }
    /// Encodes a method's result: `success = 1` (and `error = 2` for `Result`).
    #[inline]
    fn proto_encode_reply(&self, buf: &mut BytesMut) {
        self.proto_field(1, buf)
    }
    /// Decodes what [`Schema::proto_encode_reply`] wrote.
    #[inline]
    fn proto_decode_reply(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        proto::decode_wrapper(buf, depth)
    }
    /// Writes a whole Thrift body: structs are themselves, other values field 0 of a wrapper.
    fn thrift_write_message<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        th::write_wrapper(self, o)
    }
    /// Reads what [`Schema::thrift_write_message`] wrote.
    fn thrift_read_message<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        th::read_wrapper(i, depth)
    }
    /// Writes a method's result the way Apache Thrift does: `success` is field 0.
    fn thrift_write_reply<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        th::write_wrapper(self, o)
    }
    /// Reads what [`Schema::thrift_write_reply`] wrote.
    fn thrift_read_reply<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        th::read_wrapper(i, depth)
    }

    /// Names the type in emitted IDL, registering any definitions it needs.
    fn idl(idl: &mut Idl) -> TypeRef;
}

/// A field type that is one protobuf value: it can be an element of a list, a map value or
/// optional.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be nested here: protobuf has no lists of lists, optional lists or lists of options",
    label = "wrap this in a #[rpc_core::message] struct"
)]
pub trait Single: Schema {
    /// The protobuf wire type of one value.
    const PROTO_WIRE: WireType;
    /// Whether lists of this type are packed (numbers and enums).
    const PROTO_PACKED: bool = false;
    /// Appends one value without a key.
    fn proto_value(&self, buf: &mut BytesMut);
    /// Bytes [`Single::proto_value`] appends.
    fn proto_value_len(&self) -> usize;
    /// Reads one value written with `wire`.
    fn proto_read(wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<Self>;
    /// Reads one value into `slot`: it replaces what was there, except that a message merges
    /// into the one already read (protobuf's rule for a field that appears twice).
    #[inline]
    fn proto_merge_value(slot: &mut Option<Self>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()> {
        *slot = Some(Self::proto_read(wire, buf, depth)?);
        Ok(())
    }
    /// Whether proto3 leaves the value out as a field (zero, empty).
    #[inline]
    fn proto_is_default(&self) -> bool {
        false
    }
    /// Reads one value.
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self>;

    /// Appends a list of values as field `tag`; `u8` overrides it to write `bytes`.
    #[inline]
    fn proto_list(list: &[Self], tag: u32, buf: &mut BytesMut) {
        proto::list(list, tag, buf)
    }
    /// Bytes [`Single::proto_list`] appends.
    #[inline]
    fn proto_list_len(list: &[Self], tag: u32) -> usize {
        proto::list_len(list, tag)
    }
    /// Reads one occurrence of a list field (packed or not) into `list`.
    #[inline]
    fn proto_list_merge(list: &mut Vec<Self>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()> {
        proto::list_merge(list, wire, buf, depth)
    }
    /// The Thrift type of a list of this type.
    const THRIFT_LIST_TYPE: TType = TType::List;
    /// Writes a list of values.
    fn thrift_write_list<P: TOutputProtocol + ?Sized>(list: &[Self], o: &mut P) -> ThriftResult<()> {
        th::write_list(list, o)
    }
    /// Reads a list of values.
    fn thrift_read_list<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Vec<Self>> {
        th::read_list(i, depth)
    }
    /// Names a list of this type in emitted IDL.
    fn idl_list(idl: &mut Idl) -> TypeRef {
        TypeRef::list(Self::idl(idl))
    }
}

/// A message type: a struct or an enum with data, encoded as a protobuf message and a Thrift
/// struct or union. `#[rpc_core::message]` implements it.
pub trait Struct: Sized {
    /// Appends the fields.
    fn proto_body(&self, buf: &mut BytesMut);
    /// Bytes [`Struct::proto_body`] appends.
    fn proto_body_len(&self) -> usize;
    /// Reads fields until `buf` is empty, on top of `start` if given: as protobuf merges a
    /// message that appears twice, a field read replaces a scalar, extends a list and merges
    /// into a message.
    fn proto_merge_body(start: Option<Self>, buf: &mut &[u8], depth: usize) -> ProtoResult<Self>;
    /// Reads fields until `buf` is empty.
    #[inline]
    fn proto_read_body(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        Self::proto_merge_body(None, buf, depth)
    }
    /// Writes the struct.
    fn thrift_write_body<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()>;
    /// Reads the struct.
    fn thrift_read_body<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self>;
}

/// A type a map may be keyed by (protobuf allows integers, `bool` and `String`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot key a map in a #[message]",
    label = "protobuf map keys are integers, bool or String"
)]
pub trait MapKey: Single {}

/// A protobuf decode error, for generated code.
pub fn proto_error(message: impl Into<String>) -> Box<CodecError> {
    proto::error(message)
}

/// A Thrift decode error, for generated code.
pub fn thrift_error(message: impl Into<String>) -> ::thrift::Error {
    th::invalid(message)
}

/// Appends `value` as field `tag` even when it is zero (explicit presence, as in a `oneof`).
pub fn single_value_field<T: Single>(value: &T, tag: u32, buf: &mut BytesMut) {
    prost::encoding::encode_key(tag, T::PROTO_WIRE, buf);
    value.proto_value(buf);
}

/// Bytes [`single_value_field`] appends.
pub fn single_value_field_len<T: Single>(value: &T, tag: u32) -> usize {
    prost::encoding::key_len(tag) + value.proto_value_len()
}

/// Appends `value` as field `tag` unless proto3 leaves it implicit.
pub fn single_field<T: Single>(value: &T, tag: u32, buf: &mut BytesMut) {
    if !value.proto_is_default() {
        prost::encoding::encode_key(tag, T::PROTO_WIRE, buf);
        value.proto_value(buf);
    }
}

/// Bytes [`single_field`] appends.
pub fn single_field_len<T: Single>(value: &T, tag: u32) -> usize {
    if value.proto_is_default() {
        0
    } else {
        prost::encoding::key_len(tag) + value.proto_value_len()
    }
}

/// Reads one value into `slot`: the last scalar wins, messages merge.
pub fn single_merge<T: Single>(slot: &mut Option<T>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()> {
    T::proto_merge_value(slot, wire, buf, depth)
}

/// Reads one Thrift value into `slot`.
pub fn single_thrift_merge<T: Single, P: TInputProtocol + ?Sized>(
    slot: &mut Option<T>,
    i: &mut P,
    depth: usize,
) -> ThriftResult<()> {
    *slot = Some(T::thrift_read(i, depth)?);
    Ok(())
}

/// Appends a message as one length-delimited value.
///
/// The body is written once, after room for a one-byte length, and moved up only when its
/// length takes more bytes: moving a body costs less than a pass over the value to size it.
pub fn struct_value<T: Struct>(value: &T, buf: &mut BytesMut) {
    let at = buf.len();
    buf.put_u8(0);
    value.proto_body(buf);
    let len = buf.len() - at - 1;
    let width = prost::encoding::encoded_len_varint(len as u64);
    if width > 1 {
        buf.put_bytes(0, width - 1);
        buf.copy_within(at + 1..at + 1 + len, at + width);
    }
    prost::encoding::encode_varint(len as u64, &mut &mut buf[at..at + width]);
}

/// Bytes [`struct_value`] appends.
pub fn struct_value_len<T: Struct>(value: &T) -> usize {
    let len = value.proto_body_len();
    prost::encoding::encoded_len_varint(len as u64) + len
}

/// Reads a length-delimited message, one level deeper.
pub fn struct_read<T: Struct>(wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<T> {
    struct_merge(None, wire, buf, depth)
}

/// Reads a length-delimited message on top of `start`, one level deeper.
pub fn struct_merge<T: Struct>(start: Option<T>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<T> {
    proto::check_wire(WireType::LengthDelimited, wire)?;
    let mut body = proto::read_len_delimited(buf)?;
    T::proto_merge_body(start, &mut body, proto::deeper(depth)?)
}

/// Reads a Thrift struct, one level deeper.
pub fn struct_thrift_read<T: Struct, P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<T> {
    T::thrift_read_body(i, th::deeper(depth)?)
}

/// The [`Schema`] methods of a type that is one protobuf value ([`Single`]) and merges as one
/// (scalars, results, tuples, and the types `#[message]` generates).
#[doc(hidden)]
#[macro_export]
macro_rules! __single_field_methods {
    () => {
        #[inline]
        fn proto_field(&self, tag: u32, buf: &mut $crate::schema::BytesMut) {
            $crate::schema::single_field(self, tag, buf)
        }
        #[inline]
        fn proto_field_len(&self, tag: u32) -> usize {
            $crate::schema::single_field_len(self, tag)
        }
        #[inline]
        fn proto_merge(
            slot: &mut ::core::option::Option<Self>,
            wire: $crate::schema::WireType,
            buf: &mut &[u8],
            depth: usize,
        ) -> $crate::schema::ProtoResult<()> {
            $crate::schema::single_merge(slot, wire, buf, depth)
        }
        fn thrift_merge<P: $crate::schema::TInputProtocol + ?Sized>(
            slot: &mut ::core::option::Option<Self>,
            i: &mut P,
            depth: usize,
        ) -> $crate::schema::ThriftResult<()> {
            $crate::schema::single_thrift_merge(slot, i, depth)
        }
    };
}

/// The [`Single`] items of a [`Struct`]: a length-delimited protobuf message, a Thrift struct
/// (results, tuples, and the structs `#[message]` generates).
#[doc(hidden)]
#[macro_export]
macro_rules! __struct_value_methods {
    () => {
        const PROTO_WIRE: $crate::schema::WireType = $crate::schema::WireType::LengthDelimited;
        #[inline]
        fn proto_value(&self, buf: &mut $crate::schema::BytesMut) {
            $crate::schema::struct_value(self, buf)
        }
        #[inline]
        fn proto_value_len(&self) -> usize {
            $crate::schema::struct_value_len(self)
        }
        #[inline]
        fn proto_read(
            wire: $crate::schema::WireType,
            buf: &mut &[u8],
            depth: usize,
        ) -> $crate::schema::ProtoResult<Self> {
            $crate::schema::struct_read(wire, buf, depth)
        }
        #[inline]
        fn proto_merge_value(
            slot: &mut ::core::option::Option<Self>,
            wire: $crate::schema::WireType,
            buf: &mut &[u8],
            depth: usize,
        ) -> $crate::schema::ProtoResult<()> {
            let start = slot.take();
            *slot = ::core::option::Option::Some($crate::schema::struct_merge(start, wire, buf, depth)?);
            ::core::result::Result::Ok(())
        }
        fn thrift_read<P: $crate::schema::TInputProtocol + ?Sized>(
            i: &mut P,
            depth: usize,
        ) -> $crate::schema::ThriftResult<Self> {
            $crate::schema::struct_thrift_read(i, depth)
        }
    };
}

/// Implements [`Schema`] for a [`Single`] type whose field encoding is the default one.
macro_rules! single_schema {
    ($ty:ty, $thrift:expr, $idl:expr) => {
        impl Schema for $ty {
            crate::__single_field_methods!();
            #[inline]
            fn absent() -> Option<Self> {
                Some(Default::default())
            }
            const THRIFT_TYPE: TType = $thrift;
            fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
                th::write_scalar(self, o)
            }
            fn idl(_: &mut Idl) -> TypeRef {
                $idl
            }
        }
    };
}

/// Integers travel as protobuf varints; `$wide` is the type a value is widened to first.
macro_rules! varint {
    ($ty:ty, $wide:ty, $proto:literal, $thrift:expr, $thrift_name:literal, $write:ident, $as:ty, $read:ident) => {
        impl Single for $ty {
            const PROTO_WIRE: WireType = WireType::Varint;
            const PROTO_PACKED: bool = true;
            #[inline]
            fn proto_value(&self, buf: &mut BytesMut) {
                prost::encoding::encode_varint(*self as $wide as u64, buf)
            }
            #[inline]
            fn proto_value_len(&self) -> usize {
                prost::encoding::encoded_len_varint(*self as $wide as u64)
            }
            #[inline]
            fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
                proto::check_wire(WireType::Varint, wire)?;
                let raw = proto::read_varint(buf)? as $wide;
                <$ty>::try_from(raw).map_err(|_| proto::error(format!("{raw} does not fit in {}", stringify!($ty))))
            }
            #[inline]
            fn proto_is_default(&self) -> bool {
                *self == 0
            }
            fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
                let raw = i.$read()?;
                th::narrow(raw)
            }
        }
        impl th::Scalar for $ty {
            fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
                o.$write(*self as $as)
            }
        }
        impl MapKey for $ty {}
        single_schema!($ty, $thrift, TypeRef::scalar($proto, $thrift_name));
    };
}

varint!(i8, i64, "int32", TType::I08, "i8", write_i8, i8, read_i8);
varint!(i16, i64, "int32", TType::I16, "i16", write_i16, i16, read_i16);
varint!(i32, i64, "int32", TType::I32, "i32", write_i32, i32, read_i32);
varint!(i64, i64, "int64", TType::I64, "i64", write_i64, i64, read_i64);
varint!(u16, u64, "uint32", TType::I32, "i32", write_i32, i32, read_i32);
varint!(u32, u64, "uint32", TType::I64, "i64", write_i64, i64, read_i64);

// `u8` is the element of `Vec<u8>`, which is `bytes`, so it overrides the list hooks.
impl Single for u8 {
    const PROTO_WIRE: WireType = WireType::Varint;
    const PROTO_PACKED: bool = true;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        prost::encoding::encode_varint(u64::from(*self), buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        prost::encoding::encoded_len_varint(u64::from(*self))
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::check_wire(WireType::Varint, wire)?;
        let raw = proto::read_varint(buf)?;
        u8::try_from(raw).map_err(|_| proto::error(format!("{raw} does not fit in u8")))
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        *self == 0
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        th::narrow(i.read_i16()?)
    }
    #[inline]
    fn proto_list(list: &[Self], tag: u32, buf: &mut BytesMut) {
        if !list.is_empty() {
            prost::encoding::encode_key(tag, WireType::LengthDelimited, buf);
            proto::bytes_value(list, buf);
        }
    }
    #[inline]
    fn proto_list_len(list: &[Self], tag: u32) -> usize {
        if list.is_empty() {
            0
        } else {
            prost::encoding::key_len(tag) + proto::bytes_value_len(list)
        }
    }
    #[inline]
    fn proto_list_merge(list: &mut Vec<Self>, wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<()> {
        proto::check_wire(WireType::LengthDelimited, wire)?;
        let bytes = proto::read_len_delimited(buf)?;
        list.clear();
        list.extend_from_slice(bytes);
        Ok(())
    }
    const THRIFT_LIST_TYPE: TType = TType::String;
    fn thrift_write_list<P: TOutputProtocol + ?Sized>(list: &[Self], o: &mut P) -> ThriftResult<()> {
        o.write_bytes(list)
    }
    fn thrift_read_list<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Vec<Self>> {
        i.read_bytes()
    }
    fn idl_list(_: &mut Idl) -> TypeRef {
        TypeRef::scalar("bytes", "binary")
    }
}
impl th::Scalar for u8 {
    fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        o.write_i16(i16::from(*self))
    }
}
impl MapKey for u8 {}
single_schema!(u8, TType::I16, TypeRef::scalar("uint32", "i16"));

// `u64` keeps its bits in Thrift's `i64`: widening is impossible and peers rarely exceed 2^63.
impl Single for u64 {
    const PROTO_WIRE: WireType = WireType::Varint;
    const PROTO_PACKED: bool = true;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        prost::encoding::encode_varint(*self, buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        prost::encoding::encoded_len_varint(*self)
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::check_wire(WireType::Varint, wire)?;
        proto::read_varint(buf)
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        *self == 0
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        Ok(i.read_i64()? as u64)
    }
}
impl th::Scalar for u64 {
    fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        o.write_i64(*self as i64)
    }
}
impl MapKey for u64 {}
single_schema!(u64, TType::I64, TypeRef::scalar("uint64", "i64"));

impl Single for bool {
    const PROTO_WIRE: WireType = WireType::Varint;
    const PROTO_PACKED: bool = true;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        prost::encoding::encode_varint(u64::from(*self), buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        1
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::check_wire(WireType::Varint, wire)?;
        Ok(proto::read_varint(buf)? != 0)
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        !*self
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        i.read_bool()
    }
}
impl th::Scalar for bool {
    fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        o.write_bool(*self)
    }
}
impl MapKey for bool {}
single_schema!(bool, TType::Bool, TypeRef::scalar("bool", "bool"));

macro_rules! float {
    ($ty:ty, $wire:expr, $size:literal, $put:ident, $get:ident, $proto:literal) => {
        impl Single for $ty {
            const PROTO_WIRE: WireType = $wire;
            const PROTO_PACKED: bool = true;
            #[inline]
            fn proto_value(&self, buf: &mut BytesMut) {
                bytes::BufMut::$put(buf, *self)
            }
            #[inline]
            fn proto_value_len(&self) -> usize {
                $size
            }
            #[inline]
            fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
                proto::check_wire($wire, wire)?;
                if buf.len() < $size {
                    return Err(proto::error(concat!("truncated ", stringify!($ty))));
                }
                Ok(bytes::Buf::$get(buf))
            }
            #[inline]
            fn proto_is_default(&self) -> bool {
                // Negative zero is not the default: its bits differ and proto3 writes it.
                self.to_bits() == 0
            }
            fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
                Ok(i.read_double()? as $ty)
            }
            fn proto_list_merge(
                list: &mut Vec<Self>,
                wire: WireType,
                buf: &mut &[u8],
                depth: usize,
            ) -> ProtoResult<()> {
                if wire != WireType::LengthDelimited {
                    return proto::list_merge(list, wire, buf, depth);
                }
                // Packed: whole values back to back, converted in one pass.
                let packed = proto::read_len_delimited(buf)?;
                if packed.len() % $size != 0 {
                    return Err(proto::error(concat!("packed ", stringify!($ty), " list has a partial value")));
                }
                list.extend(
                    packed.chunks_exact($size).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $size]))),
                );
                Ok(())
            }
        }
        impl th::Scalar for $ty {
            fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
                o.write_double(f64::from(*self))
            }
        }
        single_schema!($ty, TType::Double, TypeRef::scalar($proto, "double"));
    };
}

float!(f32, WireType::ThirtyTwoBit, 4, put_f32_le, get_f32_le, "float");
float!(f64, WireType::SixtyFourBit, 8, put_f64_le, get_f64_le, "double");

impl Single for String {
    const PROTO_WIRE: WireType = WireType::LengthDelimited;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        proto::bytes_value(self.as_bytes(), buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        proto::bytes_value_len(self.as_bytes())
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::check_wire(WireType::LengthDelimited, wire)?;
        let bytes = proto::read_len_delimited(buf)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| proto::error(format!("invalid UTF-8 in a string: {e}")))
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        self.is_empty()
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        i.read_string()
    }
}
impl th::Scalar for String {
    fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        o.write_string(self)
    }
}
impl MapKey for String {}
single_schema!(String, TType::String, TypeRef::scalar("string", "string"));

impl Single for Bytes {
    const PROTO_WIRE: WireType = WireType::LengthDelimited;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        proto::bytes_value(self, buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        proto::bytes_value_len(self)
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::check_wire(WireType::LengthDelimited, wire)?;
        Ok(Bytes::copy_from_slice(proto::read_len_delimited(buf)?))
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        self.is_empty()
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        i.read_bytes().map(Bytes::from)
    }
}
impl th::Scalar for Bytes {
    fn write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        o.write_bytes(self)
    }
}
single_schema!(Bytes, TType::String, TypeRef::scalar("bytes", "binary"));

// `Vec<u8>` is one `bytes` value, so it may be nested where other lists may not.
impl Single for Vec<u8> {
    const PROTO_WIRE: WireType = WireType::LengthDelimited;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        proto::bytes_value(self, buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        proto::bytes_value_len(self)
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::check_wire(WireType::LengthDelimited, wire)?;
        Ok(proto::read_len_delimited(buf)?.to_vec())
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        self.is_empty()
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        i.read_bytes()
    }
}

impl<T: Single> Schema for Vec<T> {
    #[inline]
    fn proto_field(&self, tag: u32, buf: &mut BytesMut) {
        T::proto_list(self, tag, buf)
    }
    #[inline]
    fn proto_field_len(&self, tag: u32) -> usize {
        T::proto_list_len(self, tag)
    }
    #[inline]
    fn proto_merge(slot: &mut Option<Self>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()> {
        T::proto_list_merge(slot.get_or_insert_with(Vec::new), wire, buf, depth)
    }
    #[inline]
    fn absent() -> Option<Self> {
        Some(Vec::new())
    }
    const THRIFT_TYPE: TType = T::THRIFT_LIST_TYPE;
    fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        T::thrift_write_list(self, o)
    }
    fn thrift_merge<P: TInputProtocol + ?Sized>(slot: &mut Option<Self>, i: &mut P, depth: usize) -> ThriftResult<()> {
        *slot = Some(T::thrift_read_list(i, depth)?);
        Ok(())
    }
    fn idl(idl: &mut Idl) -> TypeRef {
        T::idl_list(idl)
    }
}

impl<T: Single> Schema for Option<T> {
    #[inline]
    fn proto_field(&self, tag: u32, buf: &mut BytesMut) {
        // Explicit presence: a present zero is written, unlike a plain field.
        if let Some(value) = self {
            prost::encoding::encode_key(tag, T::PROTO_WIRE, buf);
            value.proto_value(buf);
        }
    }
    #[inline]
    fn proto_field_len(&self, tag: u32) -> usize {
        self.as_ref().map_or(0, |v| prost::encoding::key_len(tag) + v.proto_value_len())
    }
    #[inline]
    fn proto_merge(slot: &mut Option<Self>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()> {
        let mut value = slot.take().flatten();
        T::proto_merge_value(&mut value, wire, buf, depth)?;
        *slot = Some(value);
        Ok(())
    }
    #[inline]
    fn absent() -> Option<Self> {
        Some(None)
    }
    const THRIFT_TYPE: TType = T::THRIFT_TYPE;
    fn thrift_present(&self) -> bool {
        self.is_some()
    }
    fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        match self {
            Some(value) => value.thrift_write(o),
            None => Ok(()),
        }
    }
    fn thrift_merge<P: TInputProtocol + ?Sized>(slot: &mut Option<Self>, i: &mut P, depth: usize) -> ThriftResult<()> {
        *slot = Some(Some(T::thrift_read(i, depth)?));
        Ok(())
    }
    fn idl(idl: &mut Idl) -> TypeRef {
        TypeRef::optional(T::idl(idl))
    }
}

/// `Box<T>` is `T` on the wire; it lets a message contain itself (`Option<Box<Node>>`).
impl<T: Single> Single for Box<T> {
    const PROTO_WIRE: WireType = T::PROTO_WIRE;
    const PROTO_PACKED: bool = T::PROTO_PACKED;
    #[inline]
    fn proto_value(&self, buf: &mut BytesMut) {
        (**self).proto_value(buf)
    }
    #[inline]
    fn proto_value_len(&self) -> usize {
        (**self).proto_value_len()
    }
    #[inline]
    fn proto_read(wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        T::proto_read(wire, buf, depth).map(Box::new)
    }
    #[inline]
    fn proto_is_default(&self) -> bool {
        (**self).proto_is_default()
    }
    fn thrift_read<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        T::thrift_read(i, depth).map(Box::new)
    }
}

impl<T: Single> Schema for Box<T> {
    crate::__single_field_methods!();
    #[inline]
    fn absent() -> Option<Self> {
        T::absent().map(Box::new)
    }
    const THRIFT_TYPE: TType = T::THRIFT_TYPE;
    const THRIFT_EXCEPTION: bool = T::THRIFT_EXCEPTION;
    fn thrift_present(&self) -> bool {
        (**self).thrift_present()
    }
    fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        (**self).thrift_write(o)
    }
    fn proto_encode_message(&self, buf: &mut BytesMut) {
        (**self).proto_encode_message(buf)
    }
    fn proto_decode_message(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        T::proto_decode_message(buf, depth).map(Box::new)
    }
    fn proto_encode_reply(&self, buf: &mut BytesMut) {
        (**self).proto_encode_reply(buf)
    }
    fn proto_decode_reply(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        T::proto_decode_reply(buf, depth).map(Box::new)
    }
    fn thrift_write_message<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        (**self).thrift_write_message(o)
    }
    fn thrift_read_message<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        T::thrift_read_message(i, depth).map(Box::new)
    }
    fn thrift_write_reply<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        (**self).thrift_write_reply(o)
    }
    fn thrift_read_reply<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        T::thrift_read_reply(i, depth).map(Box::new)
    }
    fn idl(idl: &mut Idl) -> TypeRef {
        T::idl(idl)
    }
}

/// Maps: a HashMap and a BTreeMap are encoded alike.
macro_rules! map {
    ($map:ident, $($bound:tt)+) => {
        impl<K: MapKey + $($bound)+, V: Single> Schema for $map<K, V> {
            #[inline]
            fn proto_field(&self, tag: u32, buf: &mut BytesMut) {
                for (k, v) in self {
                    proto::map_entry(k, v, tag, buf);
                }
            }
            #[inline]
            fn proto_field_len(&self, tag: u32) -> usize {
                self.iter().map(|(k, v)| proto::map_entry_len(k, v, tag)).sum()
            }
            #[inline]
            fn proto_merge(slot: &mut Option<Self>, wire: WireType, buf: &mut &[u8], depth: usize) -> ProtoResult<()> {
                let (k, v) = proto::read_map_entry(wire, buf, depth)?;
                slot.get_or_insert_with(Default::default).insert(k, v);
                Ok(())
            }
            #[inline]
            fn absent() -> Option<Self> {
                Some(Default::default())
            }
            const THRIFT_TYPE: TType = TType::Map;
            fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
                th::write_map(self.len(), self.iter(), o)
            }
            fn thrift_merge<P: TInputProtocol + ?Sized>(
                slot: &mut Option<Self>,
                i: &mut P,
                depth: usize,
            ) -> ThriftResult<()> {
                let mut map = $map::default();
                th::read_map(i, depth, |k, v| {
                    map.insert(k, v);
                })?;
                *slot = Some(map);
                Ok(())
            }
            fn idl(idl: &mut Idl) -> TypeRef {
                TypeRef::map(K::idl(idl), V::idl(idl))
            }
        }
    };
}

map!(HashMap, Eq + Hash);
map!(BTreeMap, Ord);

impl Schema for () {
    fn proto_field(&self, _: u32, _: &mut BytesMut) {}
    #[inline]
    fn proto_field_len(&self, _: u32) -> usize {
        0
    }
    #[inline]
    fn proto_merge(slot: &mut Option<Self>, wire: WireType, buf: &mut &[u8], _: usize) -> ProtoResult<()> {
        proto::check_wire(WireType::LengthDelimited, wire)?;
        proto::read_len_delimited(buf)?;
        *slot = Some(());
        Ok(())
    }
    #[inline]
    fn absent() -> Option<Self> {
        Some(())
    }
    const THRIFT_TYPE: TType = TType::Struct;
    fn thrift_present(&self) -> bool {
        false
    }
    fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        th::write_empty(o)
    }
    fn thrift_merge<P: TInputProtocol + ?Sized>(slot: &mut Option<Self>, i: &mut P, _: usize) -> ThriftResult<()> {
        i.skip(TType::Struct)?;
        *slot = Some(());
        Ok(())
    }
    fn proto_encode_message(&self, _: &mut BytesMut) {}
    #[inline]
    fn proto_decode_message(buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::skip_all(buf)
    }
    fn proto_encode_reply(&self, _: &mut BytesMut) {}
    #[inline]
    fn proto_decode_reply(buf: &mut &[u8], _: usize) -> ProtoResult<Self> {
        proto::skip_all(buf)
    }
    fn thrift_write_message<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        th::write_empty(o)
    }
    fn thrift_read_message<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        i.skip(TType::Struct)
    }
    fn thrift_write_reply<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        th::write_empty(o)
    }
    fn thrift_read_reply<P: TInputProtocol + ?Sized>(i: &mut P, _: usize) -> ThriftResult<Self> {
        i.skip(TType::Struct)
    }
    fn idl(_: &mut Idl) -> TypeRef {
        TypeRef::unit()
    }
}

/// `Result<T, E>` is a method result: `success` and the declared error as an exception.
impl<T: Schema, E: Single> Struct for Result<T, E> {
    #[inline]
    fn proto_body(&self, buf: &mut BytesMut) {
        match self {
            Ok(value) => value.proto_field(1, buf),
            Err(error) => {
                prost::encoding::encode_key(2, E::PROTO_WIRE, buf);
                error.proto_value(buf);
            }
        }
    }
    #[inline]
    fn proto_body_len(&self) -> usize {
        match self {
            Ok(value) => value.proto_field_len(1),
            Err(error) => prost::encoding::key_len(2) + error.proto_value_len(),
        }
    }
    /// A result is a oneof: the last one read wins whole.
    #[inline]
    fn proto_merge_body(_: Option<Self>, buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        let (mut ok, mut err) = (None, None);
        while !buf.is_empty() {
            match proto::read_key(buf)? {
                (1, wire) => T::proto_merge(&mut ok, wire, buf, depth)?,
                (2, wire) => err = Some(E::proto_read(wire, buf, depth)?),
                (tag, wire) => proto::skip(wire, tag, buf)?,
            }
        }
        match err {
            Some(error) => Ok(Err(error)),
            None => proto::finish(ok, "result.success").map(Ok),
        }
    }
    fn thrift_write_body<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        o.write_struct_begin(&th::struct_header())?;
        match self {
            Ok(value) => th::write_field(value, 0, o)?,
            Err(error) if E::THRIFT_EXCEPTION => th::write_field(error, 1, o)?,
            Err(error) => {
                o.write_field_begin(&th::field_header(TType::Struct, 1))?;
                th::write_wrapped(error, 1, o)?;
                o.write_field_end()?;
            }
        }
        o.write_field_stop()?;
        o.write_struct_end()
    }
    fn thrift_read_body<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        let (mut ok, mut err) = (None, None);
        i.read_struct_begin()?;
        loop {
            let field = i.read_field_begin()?;
            match (field.field_type, field.id) {
                (TType::Stop, _) => break,
                (t, Some(0)) if t == T::THRIFT_TYPE => T::thrift_merge(&mut ok, i, depth)?,
                (TType::Struct, Some(1)) if !E::THRIFT_EXCEPTION => {
                    err = Some(th::read_wrapped(i, th::deeper(depth)?, 1, "exception.value")?)
                }
                // Bare: a struct error, or one from a peer that does not wrap (as this crate
                // did not before it declared the wrapper in its .thrift).
                (t, Some(1)) if t == E::THRIFT_TYPE => err = Some(E::thrift_read(i, depth)?),
                // Skipping it would read the reply as a success.
                (t, Some(1)) => return Err(th::invalid(format!("the result's error has type {t:?}"))),
                (t, _) => i.skip(t)?,
            }
            i.read_field_end()?;
        }
        i.read_struct_end()?;
        match err {
            Some(error) => Ok(Err(error)),
            None => th::finish(ok, "result.success").map(Ok),
        }
    }
}

impl<T: Schema, E: Single> Single for Result<T, E> {
    crate::__struct_value_methods!();
}

impl<T: Schema, E: Single> Schema for Result<T, E> {
    crate::__single_field_methods!();
    const THRIFT_TYPE: TType = TType::Struct;
    fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        self.thrift_write_body(o)
    }
    #[inline]
    fn proto_encode_message(&self, buf: &mut BytesMut) {
        self.proto_body(buf)
    }
    #[inline]
    fn proto_decode_message(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        Self::proto_read_body(buf, depth)
    }
    #[inline]
    fn proto_encode_reply(&self, buf: &mut BytesMut) {
        self.proto_body(buf)
    }
    #[inline]
    fn proto_decode_reply(buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
        Self::proto_read_body(buf, depth)
    }
    fn thrift_write_message<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        self.thrift_write_body(o)
    }
    fn thrift_read_message<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        Self::thrift_read_body(i, depth)
    }
    fn thrift_write_reply<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
        self.thrift_write_body(o)
    }
    fn thrift_read_reply<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
        Self::thrift_read_body(i, depth)
    }
    fn idl(idl: &mut Idl) -> TypeRef {
        let (ok, error) = (T::idl(idl), E::idl(idl));
        let error = if E::THRIFT_EXCEPTION { error } else { idl.exception_wrapper(error) };
        TypeRef::result(ok, error)
    }
}

/// Tuples are messages whose fields are numbered from 1 in order.
macro_rules! tuple {
    ($($name:ident $slot:ident $tag:literal),+) => {
        impl<$($name: Schema),+> Struct for ($($name,)+) {
            #[inline]
            fn proto_body(&self, buf: &mut BytesMut) {
                let ($($slot,)+) = self;
                $($slot.proto_field($tag, buf);)+
            }
            #[inline]
            fn proto_body_len(&self) -> usize {
                let ($($slot,)+) = self;
                0 $(+ $slot.proto_field_len($tag))+
            }
            /// Tuples carry arguments and replies, which arrive whole once.
            #[inline]
            fn proto_merge_body(_: Option<Self>, buf: &mut &[u8], depth: usize) -> ProtoResult<Self> {
                $(let mut $slot = None;)+
                while !buf.is_empty() {
                    match proto::read_key(buf)? {
                        $(($tag, wire) => $name::proto_merge(&mut $slot, wire, buf, depth)?,)+
                        (tag, wire) => proto::skip(wire, tag, buf)?,
                    }
                }
                Ok(($(proto::finish($slot, concat!("tuple.", stringify!($tag)))?,)+))
            }
            fn thrift_write_body<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
                let ($($slot,)+) = self;
                o.write_struct_begin(&th::struct_header())?;
                $(th::write_field($slot, $tag, o)?;)+
                o.write_field_stop()?;
                o.write_struct_end()
            }
            fn thrift_read_body<P: TInputProtocol + ?Sized>(i: &mut P, depth: usize) -> ThriftResult<Self> {
                $(let mut $slot = None;)+
                i.read_struct_begin()?;
                loop {
                    let field = i.read_field_begin()?;
                    match (field.field_type, field.id) {
                        (TType::Stop, _) => break,
                        $((t, Some($tag)) if t == $name::THRIFT_TYPE => $name::thrift_merge(&mut $slot, i, depth)?,)+
                        (t, _) => i.skip(t)?,
                    }
                    i.read_field_end()?;
                }
                i.read_struct_end()?;
                Ok(($(th::finish($slot, concat!("tuple.", stringify!($tag)))?,)+))
            }
        }

        impl<$($name: Schema),+> Single for ($($name,)+) {
            crate::__struct_value_methods!();
        }

        impl<$($name: Schema),+> Schema for ($($name,)+) {
            crate::__single_field_methods!();
            const THRIFT_TYPE: TType = TType::Struct;
            const THRIFT_EXCEPTION: bool = true;
            fn thrift_write<P: TOutputProtocol + ?Sized>(&self, o: &mut P) -> ThriftResult<()> {
                self.thrift_write_body(o)
            }
            fn idl(idl: &mut Idl) -> TypeRef {
                let fields = vec![$(crate::idl::FieldDef::new(concat!("_", stringify!($tag)), $tag, $name::idl(idl))),+];
                idl.define_tuple(fields)
            }
        }
    };
}

tuple!(A a 1, B b 2);
tuple!(A a 1, B b 2, C c 3);
tuple!(A a 1, B b 2, C c 3, D d 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_value_is_written_as_a_sizing_pass_would_write_it_at_every_length_width() {
        // Bodies whose lengths sit on each side of the one-, two- and three-byte varints.
        for payload in [0, 1, 124, 125, 126, 127, 200, 16_378, 16_379, 16_380, 20_000, 2_097_149, 2_097_150] {
            let value: Result<Vec<u8>, String> = Ok(vec![7; payload]);
            let mut body = BytesMut::new();
            value.proto_body(&mut body);
            let mut expected = BytesMut::new();
            prost::encoding::encode_varint(body.len() as u64, &mut expected);
            expected.extend_from_slice(&body);

            let mut written = BytesMut::from(&b"prefix"[..]);
            struct_value(&value, &mut written);
            assert_eq!(&written[..6], b"prefix");
            assert!(written[6..] == expected[..], "a {payload}-byte payload was written differently");
            assert_eq!(struct_value_len(&value), expected.len());
            let read: Result<Vec<u8>, String> =
                struct_read(WireType::LengthDelimited, &mut &written[6..], 0).expect("reads back");
            assert_eq!(read, value);
        }
    }
}
