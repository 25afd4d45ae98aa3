//! Bytes on the socket: frames, their codec, and the coalescing writer.
//!
//! Both the client and the server move frames with these pieces; neither knows the other.

mod frame;
pub(crate) mod io;
pub(crate) mod thrift;
mod writer;

pub use frame::{
    check_call_head, check_metadata, check_preface, Frame, FrameBuilder, FrameCodec, FrameError, Head,
    DEFAULT_MAX_FRAME_SIZE, PREFACE, VERSION,
};
pub(crate) use frame::{close_frame, open_frame, put_reply};
pub(crate) use writer::{FrameReader, FrameWriter, RequestBytes, BATCH, FLUSH_AT, LARGE_FRAME};
