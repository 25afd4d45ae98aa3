#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpc_fuzz::decode(rpc_core::Codec::Protobuf, data));
