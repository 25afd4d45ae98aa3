//! Criterion benchmarks of every codec on the datasets of `rpc bench codecs`, with prost on
//! an equivalent derived struct as the protobuf baseline and the Thrift compiler's generated
//! Rust as the Thrift one: `cargo bench -p rpc-codecs`.

// `criterion_group!` generates functions without docs.
#![allow(missing_docs)]

mod datasets;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use datasets::ToThrift;
use rpc_codecs::{Codec, Message};
use std::hint::black_box;
use thrift::protocol::{TCompactInputProtocol, TCompactOutputProtocol, TSerializable};

fn dataset<T: Message + ToThrift, P: prost::Message + Default>(
    c: &mut Criterion,
    name: &str,
    value: &T,
    prost_value: &P,
) {
    let mut group = c.benchmark_group(name);
    for &codec in Codec::ALL {
        let mut buf = BytesMut::new();
        codec.encode(value, &mut buf).expect("encodes");
        let encoded = buf.clone().freeze();
        group.bench_function(BenchmarkId::new("encode", codec), |b| {
            b.iter(|| {
                buf.clear();
                codec.encode(black_box(value), &mut buf).expect("encodes");
            })
        });
        group.bench_function(BenchmarkId::new("decode", codec), |b| {
            b.iter(|| codec.decode::<T>(black_box(&encoded)).expect("decodes"))
        });
    }
    let mut buf = BytesMut::new();
    prost_value.encode(&mut buf).expect("encodes");
    let encoded = buf.clone().freeze();
    group.bench_function(BenchmarkId::new("encode", "prost-direct"), |b| {
        b.iter(|| {
            buf.clear();
            black_box(prost_value).encode(&mut buf).expect("encodes");
        })
    });
    group.bench_function(BenchmarkId::new("decode", "prost-direct"), |b| {
        b.iter(|| P::decode(black_box(&encoded[..])).expect("decodes"))
    });
    let generated = value.to_thrift();
    let mut buf = BytesMut::new();
    generated.write_to_out_protocol(&mut TCompactOutputProtocol::new((&mut buf).writer())).expect("encodes");
    let encoded = buf.clone().freeze();
    group.bench_function(BenchmarkId::new("encode", "thrift-compact-generated"), |b| {
        b.iter(|| {
            buf.clear();
            let mut out = TCompactOutputProtocol::new((&mut buf).writer());
            black_box(&generated).write_to_out_protocol(&mut out).expect("encodes");
        })
    });
    group.bench_function(BenchmarkId::new("decode", "thrift-compact-generated"), |b| {
        b.iter(|| T::Generated::read_from_in_protocol(&mut TCompactInputProtocol::new(black_box(&encoded[..]))))
    });
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let (s, p) = datasets::small();
    dataset(c, "small", &s, &p);
    let (s, p) = datasets::logs();
    dataset(c, "logs", &s, &p);
    let (s, p) = datasets::mesh();
    dataset(c, "mesh", &s, &p);
    let (s, p) = datasets::tree();
    dataset(c, "tree", &s, &p);
}

criterion_group!(benches, codecs);
criterion_main!(benches);
