//! Wire formats for message bodies.
//!
//! A [`Codec`] turns a [`Message`] into bytes and back. It never sees a socket, a frame header or
//! a connection: `rpc-core` hands it a body buffer and takes the bytes it produced.
//!
//! The codec of a call is chosen by the client's channel and announced in every frame by its
//! one-byte [`Codec::id`], so one server answers clients of different codecs at once.
//!
//! JSON and MessagePack work from `serde` alone. Protobuf and Thrift need field numbers: a
//! [`Message`] gets them from [`schema::Schema`], which `#[rpc_core::message]` implements (see
//! the [`schema`] module for how Rust types map to each format). A `serde_json::Value` is a
//! `Message` too, for tools such as `rpc call`, but it has no schema: the Protobuf and Thrift
//! codecs reject it with [`CodecErrorKind::NoSchema`].
//!
//! ```
//! use rpc_codecs::Codec;
//!
//! let mut buf = bytes::BytesMut::new();
//! let note = ("hi".to_string(), 7u32);
//! Codec::MsgPack.encode(&vec![1u64, 2, 3], &mut buf).unwrap();
//! let back: Vec<u64> = Codec::MsgPack.decode(&buf).unwrap();
//! assert_eq!(back, [1, 2, 3]);
//! # let _ = note;
//! ```

#![forbid(unsafe_code)]

mod budget;
pub mod bytes_field;
mod error;
pub mod float_field;
pub mod idl;
mod proto;
pub mod schema;
mod thrift;

use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use idl::Idl;

pub use error::{CodecError, CodecErrorKind};

/// Deepest nesting a decoder accepts; deeper input is rejected instead of exhausting the stack.
pub const MAX_DEPTH: usize = 128;

/// Whether a body is a standalone message or a method's result.
///
/// JSON and MessagePack encode both alike. Protobuf and Thrift wrap a result the way Apache
/// Thrift does (`success`, then the declared error), so stock peers understand it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A message on its own, or a method's arguments.
    Message,
    /// A method's result.
    Reply,
}

/// A value that every codec can encode and decode.
///
/// Implemented for every [`schema::Schema`] type that is also `serde`-serializable and owned
/// (what `#[rpc_core::message]` derives, and the std types), and for `serde_json::Value`, which
/// only JSON and MessagePack can carry.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Encodes with a schema codec (Protobuf or Thrift).
    fn encode_schema(&self, codec: Codec, role: Role, buf: &mut BytesMut) -> Result<(), CodecError>;
    /// Decodes with a schema codec (Protobuf or Thrift).
    fn decode_schema(codec: Codec, role: Role, bytes: &[u8]) -> Result<Self, CodecError>;
    /// Whether the type has the field numbers Protobuf and Thrift need (`serde_json::Value` has
    /// not).
    fn has_schema() -> bool {
        true
    }
}

impl<T: schema::Schema + Serialize + DeserializeOwned + Send + Sync + 'static> Message for T {
    fn encode_schema(&self, codec: Codec, role: Role, buf: &mut BytesMut) -> Result<(), CodecError> {
        match (codec, role) {
            (Codec::Protobuf, Role::Message) => self.proto_encode_message(buf),
            (Codec::Protobuf, Role::Reply) => self.proto_encode_reply(buf),
            (Codec::ThriftBinary | Codec::ThriftCompact, _) => return thrift::encode(self, codec, role, buf),
            (Codec::Json | Codec::MsgPack, _) => return codec.encode_serde(self, buf),
        }
        Ok(())
    }

    fn decode_schema(codec: Codec, role: Role, mut bytes: &[u8]) -> Result<Self, CodecError> {
        match (codec, role) {
            (Codec::Protobuf, Role::Message) => T::proto_decode_message(&mut bytes, 0).map_err(|e| *e),
            (Codec::Protobuf, Role::Reply) => T::proto_decode_reply(&mut bytes, 0).map_err(|e| *e),
            (Codec::ThriftBinary | Codec::ThriftCompact, _) => thrift::decode(codec, role, bytes),
            (Codec::Json | Codec::MsgPack, _) => codec.decode_serde(bytes),
        }
    }
}

impl Message for serde_json::Value {
    fn encode_schema(&self, codec: Codec, _: Role, buf: &mut BytesMut) -> Result<(), CodecError> {
        match codec {
            Codec::Json | Codec::MsgPack => codec.encode_serde(self, buf),
            _ => Err(no_schema(codec)),
        }
    }

    fn decode_schema(codec: Codec, _: Role, bytes: &[u8]) -> Result<Self, CodecError> {
        match codec {
            Codec::Json | Codec::MsgPack => codec.decode_serde(bytes),
            _ => Err(no_schema(codec)),
        }
    }

    fn has_schema() -> bool {
        false
    }
}

fn no_schema(codec: Codec) -> CodecError {
    CodecError::new(
        Some(codec),
        CodecErrorKind::NoSchema,
        format!(
            "a serde_json::Value has no schema, which {codec} needs; use json or msgpack, or a #[rpc_core::message] type"
        ),
    )
}

/// A wire format for message bodies.
///
/// The numeric ids are part of the wire protocol (see `docs/PROTOCOL.md`); ids 1 to 3 are
/// reserved for Protobuf, Thrift binary and Thrift compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// Protobuf (proto3) via `prost`'s wire primitives; field numbers from `#[message]`. The
    /// default: compact, the fastest here, and readable by any protobuf peer given `rpc idl`.
    #[default]
    Protobuf,
    /// Apache Thrift's binary protocol (strict), via the `thrift` crate.
    ThriftBinary,
    /// Apache Thrift's compact protocol, via the `thrift` crate.
    ThriftCompact,
    /// JSON via `serde_json`: human-readable, self-describing.
    Json,
    /// MessagePack via `rmp-serde`, structs as maps keyed by field name.
    MsgPack,
}

impl Codec {
    /// Every codec this build supports.
    pub const ALL: &'static [Codec] =
        &[Codec::Protobuf, Codec::ThriftBinary, Codec::ThriftCompact, Codec::Json, Codec::MsgPack];

    /// The codec's id on the wire.
    pub const fn id(self) -> u8 {
        match self {
            Codec::Protobuf => 1,
            Codec::ThriftBinary => 2,
            Codec::ThriftCompact => 3,
            Codec::Json => 4,
            Codec::MsgPack => 5,
        }
    }

    /// The codec announced by a wire id.
    pub fn from_id(id: u8) -> Result<Codec, CodecError> {
        match id {
            1 => Ok(Codec::Protobuf),
            2 => Ok(Codec::ThriftBinary),
            3 => Ok(Codec::ThriftCompact),
            4 => Ok(Codec::Json),
            5 => Ok(Codec::MsgPack),
            other => Err(CodecError::new(
                None,
                CodecErrorKind::UnknownCodec,
                format!("codec id {other} is not supported by this build (known: 1 protobuf, 2 thrift-binary, 3 thrift-compact, 4 json, 5 msgpack)"),
            )),
        }
    }

    /// The codec's short name, as accepted by [`Codec::from_name`].
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Protobuf => "protobuf",
            Codec::ThriftBinary => "thrift-binary",
            Codec::ThriftCompact => "thrift-compact",
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// The codec with a short name (`protobuf`, `thrift-binary`, `thrift-compact`, `json`,
    /// `msgpack`).
    pub fn from_name(name: &str) -> Result<Codec, CodecError> {
        Codec::ALL.iter().copied().find(|c| c.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            CodecError::new(
                None,
                CodecErrorKind::UnknownCodec,
                format!("unknown codec {name:?}; use one of: protobuf, thrift-binary, thrift-compact, json, msgpack"),
            )
        })
    }

    /// Whether the codec needs a schema (field numbers), which a `serde_json::Value` lacks.
    pub const fn needs_schema(self) -> bool {
        matches!(self, Codec::Protobuf | Codec::ThriftBinary | Codec::ThriftCompact)
    }

    /// Appends the encoding of `value` to `buf`.
    #[inline]
    pub fn encode<T: Message>(self, value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Codec::Json | Codec::MsgPack => self.encode_serde(value, buf),
            _ => value.encode_schema(self, Role::Message, buf),
        }
    }

    /// Decodes a whole body; trailing bytes are an error.
    #[inline]
    pub fn decode<T: Message>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Json | Codec::MsgPack => self.decode_serde(bytes),
            _ => T::decode_schema(self, Role::Message, bytes),
        }
    }

    /// Appends the encoding of a method's result (see [`Role::Reply`]).
    #[inline]
    pub fn encode_reply<T: Message>(self, value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Codec::Json | Codec::MsgPack => self.encode_serde(value, buf),
            _ => value.encode_schema(self, Role::Reply, buf),
        }
    }

    /// Decodes a method's result (see [`Role::Reply`]).
    #[inline]
    pub fn decode_reply<T: Message>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Json | Codec::MsgPack => self.decode_serde(bytes),
            _ => T::decode_schema(self, Role::Reply, bytes),
        }
    }

    fn encode_serde<T: Serialize + ?Sized>(self, value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        let writer = buf.writer();
        let result = match self {
            Codec::Json => serde_json::to_writer(writer, value).map_err(|e| e.to_string()),
            _ => {
                let mut writer = writer;
                rmp_serde::encode::write_named(&mut writer, value).map_err(|e| e.to_string())
            }
        };
        result.map_err(|m| CodecError::new(Some(self), CodecErrorKind::Encode, m))
    }

    fn decode_serde<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        let error = |m: String| CodecError::new(Some(self), CodecErrorKind::Decode, m);
        if self == Codec::Json {
            // serde_json limits recursion to 128 levels and rejects trailing characters itself.
            return serde_json::from_slice(bytes).map_err(|e| error(e.to_string()));
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(MAX_DEPTH);
        // Matched rather than mapped, so the value moves once (as in the Thrift decoder).
        match budget::with_budget(bytes.len(), || T::deserialize(budget::Capped(&mut de))) {
            // The borrowed reader does not say where it stopped; reading a marker past the
            // value fails with end-of-input exactly when nothing trails it.
            Ok(value) => match serde::de::IgnoredAny::deserialize(&mut de) {
                Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    Ok(value)
                }
                _ => Err(error("trailing bytes after the message".to_owned())),
            },
            Err(e) => Err(error(e.to_string())),
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Codec::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Sample = BTreeMap<String, i64>;

    fn sample() -> Sample {
        [("ünïcode".to_string(), i64::MIN), ("k".to_string(), 7)].into()
    }

    #[test]
    fn every_codec_round_trips() {
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            codec.encode(&sample(), &mut buf).unwrap();
            assert_eq!(codec.decode::<Sample>(&buf).unwrap(), sample(), "{codec}");
            let mut buf = BytesMut::new();
            let reply: Result<Option<u64>, String> = Err("no".into());
            codec.encode_reply(&reply, &mut buf).unwrap();
            assert_eq!(codec.decode_reply::<Result<Option<u64>, String>>(&buf).unwrap(), reply, "{codec}");
            assert_eq!(Codec::from_id(codec.id()).unwrap(), codec);
            assert_eq!(codec.name().parse::<Codec>().unwrap(), codec);
        }
    }

    #[test]
    fn truncated_and_trailing_input_are_decode_errors() {
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            codec.encode(&sample(), &mut buf).unwrap();
            // An empty protobuf body is a valid empty message; every other cut is inside a value.
            let first = if codec == Codec::Protobuf { 1 } else { 0 };
            for cut in [first, 1, buf.len() - 1] {
                let err = codec.decode::<Sample>(&buf[..cut]).unwrap_err();
                assert_eq!(err.kind(), CodecErrorKind::Decode, "{codec} cut at {cut}");
            }
            buf.extend_from_slice(&[0xc0, 0xc0]);
            let err = codec.decode::<Sample>(&buf).unwrap_err();
            assert_eq!(err.kind(), CodecErrorKind::Decode, "{codec} with trailing bytes");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_stack_overflow() {
        let json = "[".repeat(100_000);
        assert!(Codec::Json.decode::<serde_json::Value>(json.as_bytes()).is_err());
        let msgpack = vec![0x91u8; 100_000]; // fixarray of one element, nested
        let err = Codec::MsgPack.decode::<serde_json::Value>(&msgpack).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode);
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating_them() {
        // array32 claiming 4 billion elements, then nothing.
        let msgpack = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(Codec::MsgPack.decode::<Vec<u64>>(&msgpack).is_err());
        // str32 claiming 4 GiB.
        let msgpack = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(Codec::MsgPack.decode::<String>(&msgpack).is_err());
        // Thrift binary: struct field 0 of type string, claiming 2 GiB, and a negative length.
        for len in [[0x7f, 0xff, 0xff, 0xff], [0xff, 0xff, 0xff, 0xfe]] {
            let thrift = [&[11u8, 0, 0][..], &len, b"ab"].concat();
            let err = Codec::ThriftBinary.decode::<String>(&thrift).unwrap_err();
            assert_eq!(err.kind(), CodecErrorKind::Decode);
        }
        // Thrift compact: field 0 (long form) of type binary, claiming 4 GiB.
        let thrift = [0x08, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'];
        assert!(Codec::ThriftCompact.decode::<String>(&thrift).is_err());
        // Protobuf: field 1 of type string, claiming 2^63 bytes.
        let proto = [0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(Codec::Protobuf.decode::<String>(&proto).is_err());
    }

    #[test]
    fn a_json_value_has_no_schema() {
        let value = serde_json::json!({"a": 1});
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            let result = codec.encode(&value, &mut buf);
            if codec.needs_schema() {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), CodecErrorKind::NoSchema);
                assert!(err.to_string().contains("json or msgpack"), "{err}");
            } else {
                result.unwrap();
                assert_eq!(codec.decode::<serde_json::Value>(&buf).unwrap(), value);
            }
        }
    }

    #[test]
    fn unknown_ids_and_names_say_what_is_supported() {
        let err = Codec::from_id(99).unwrap_err();
        assert!(err.to_string().contains("msgpack"), "{err}");
        let err = "yaml".parse::<Codec>().unwrap_err();
        assert!(err.to_string().contains("thrift-compact"), "{err}");
    }
}
