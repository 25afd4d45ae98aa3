//! The error every codec returns.

use crate::Codec;

/// What went wrong in a codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecErrorKind {
    /// A value could not be encoded (for example a map with non-string keys in JSON).
    Encode,
    /// Bytes were not a valid encoding of the expected type.
    Decode,
    /// A codec id or name is not known to this build.
    UnknownCodec,
    /// The codec needs a schema (Protobuf, Thrift) and the value has none (`serde_json::Value`).
    NoSchema,
}

/// A typed codec failure with a message that says what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError {
    codec: Option<Codec>,
    kind: CodecErrorKind,
    message: String,
}

impl CodecError {
    /// Creates an error; `codec` is `None` when no codec was chosen yet.
    pub fn new(codec: Option<Codec>, kind: CodecErrorKind, message: impl Into<String>) -> Self {
        CodecError { codec, kind, message: message.into() }
    }

    /// The codec that failed, if one was chosen.
    pub fn codec(&self) -> Option<Codec> {
        self.codec
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> CodecErrorKind {
        self.kind
    }

    /// The underlying message, without the codec prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.kind {
            CodecErrorKind::Encode => "encode",
            CodecErrorKind::Decode => "decode",
            CodecErrorKind::NoSchema => "encode",
            CodecErrorKind::UnknownCodec => return f.write_str(&self.message),
        };
        match self.codec {
            Some(codec) => write!(f, "{codec} {action} failed: {}", self.message),
            None => write!(f, "{action} failed: {}", self.message),
        }
    }
}

impl std::error::Error for CodecError {}
