#![no_main]

use rpc_core::transport::FrameCodec;
use tokio_util::codec::Decoder;

// Frames of any kind, split at every point the input allows; errors are expected, panics not.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
});
