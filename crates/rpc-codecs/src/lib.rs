//! Wire formats for message bodies.
//!
//! A [`Codec`] turns a [`Message`] into bytes and back. It never sees a socket, a frame header or
//! a connection: `rpc-core` hands it a body buffer and takes the bytes it produced.
//!
//! The codec of a call is chosen by the client's channel and announced in every frame by its
//! one-byte [`Codec::id`], so one server answers clients of different codecs at once.
//!
//! ```
//! use rpc_codecs::Codec;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Ping { seq: u32, note: String }
//!
//! let mut buf = bytes::BytesMut::new();
//! let ping = Ping { seq: 7, note: "hi".into() };
//! Codec::MsgPack.encode(&ping, &mut buf).unwrap();
//! let back: Ping = Codec::MsgPack.decode(&buf).unwrap();
//! assert_eq!(back, ping);
//! ```

pub mod bytes_field;
mod error;

use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use error::{CodecError, CodecErrorKind};

/// Deepest nesting a decoder accepts; deeper input is rejected instead of exhausting the stack.
pub const MAX_DEPTH: usize = 128;

/// A value that every codec can encode and decode.
///
/// Implemented for every type that is `serde`-serializable and owned; `#[rpc_core::message]`
/// derives what it needs.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Message for T {}

/// A wire format for message bodies.
///
/// The numeric ids are part of the wire protocol (see `docs/PROTOCOL.md`); ids 1 to 3 are
/// reserved for Protobuf, Thrift binary and Thrift compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON via `serde_json`: human-readable, self-describing.
    Json,
    /// MessagePack via `rmp-serde`, structs as maps keyed by field name.
    #[default]
    MsgPack,
}

impl Codec {
    /// Every codec this build supports.
    pub const ALL: &'static [Codec] = &[Codec::Json, Codec::MsgPack];

    /// The codec's id on the wire.
    pub const fn id(self) -> u8 {
        match self {
            Codec::Json => 4,
            Codec::MsgPack => 5,
        }
    }

    /// The codec announced by a wire id.
    pub fn from_id(id: u8) -> Result<Codec, CodecError> {
        match id {
            4 => Ok(Codec::Json),
            5 => Ok(Codec::MsgPack),
            other => Err(CodecError::new(
                None,
                CodecErrorKind::UnknownCodec,
                format!("codec id {other} is not supported by this build (known: 4 json, 5 msgpack)"),
            )),
        }
    }

    /// The codec's short name, as accepted by [`Codec::from_name`].
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// The codec with a short name (`json`, `msgpack`).
    pub fn from_name(name: &str) -> Result<Codec, CodecError> {
        Codec::ALL.iter().copied().find(|c| c.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            CodecError::new(
                None,
                CodecErrorKind::UnknownCodec,
                format!("unknown codec {name:?}; use one of: json, msgpack"),
            )
        })
    }

    /// Appends the encoding of `value` to `buf`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        let writer = buf.writer();
        let result = match self {
            Codec::Json => serde_json::to_writer(writer, value).map_err(|e| e.to_string()),
            Codec::MsgPack => {
                let mut writer = writer;
                rmp_serde::encode::write_named(&mut writer, value).map_err(|e| e.to_string())
            }
        };
        result.map_err(|m| CodecError::new(Some(self), CodecErrorKind::Encode, m))
    }

    /// Decodes a whole body; trailing bytes are an error.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        let result = match self {
            // serde_json limits recursion to 128 levels and rejects trailing characters itself.
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::MsgPack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(MAX_DEPTH);
                T::deserialize(&mut de).map_err(|e| e.to_string()).and_then(|value| {
                    // The borrowed reader does not say where it stopped; reading a marker past
                    // the value fails with end-of-input exactly when nothing trails it.
                    match serde::de::IgnoredAny::deserialize(&mut de) {
                        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                        {
                            Ok(value)
                        }
                        _ => Err("trailing bytes after the message".to_owned()),
                    }
                })
            }
        };
        result.map_err(|m| CodecError::new(Some(self), CodecErrorKind::Decode, m))
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

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Sample {
        id: u64,
        delta: i32,
        name: String,
        tags: Vec<u32>,
        attrs: BTreeMap<String, String>,
        maybe: Option<f64>,
    }

    fn sample() -> Sample {
        Sample {
            id: u64::MAX,
            delta: -5,
            name: "ünïcode".into(),
            tags: vec![1, 2, 3],
            attrs: [("k".to_string(), "v".to_string())].into(),
            maybe: None,
        }
    }

    #[test]
    fn every_codec_round_trips() {
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            codec.encode(&sample(), &mut buf).unwrap();
            assert_eq!(codec.decode::<Sample>(&buf).unwrap(), sample(), "{codec}");
            assert_eq!(Codec::from_id(codec.id()).unwrap(), codec);
            assert_eq!(codec.name().parse::<Codec>().unwrap(), codec);
        }
    }

    #[test]
    fn truncated_and_trailing_input_are_decode_errors() {
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            codec.encode(&sample(), &mut buf).unwrap();
            for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
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
    }

    #[test]
    fn unknown_ids_and_names_say_what_is_supported() {
        let err = Codec::from_id(99).unwrap_err();
        assert!(err.to_string().contains("msgpack"), "{err}");
        let err = "yaml".parse::<Codec>().unwrap_err();
        assert!(err.to_string().contains("json"), "{err}");
    }
}
