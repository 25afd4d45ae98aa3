//! Datasets that resemble real traffic, shared by `cargo bench -p rpc-codecs` and
//! `rpc bench codecs`: each as a `#[message]` type, as an equivalent `prost`-derived struct and
//! as the Thrift compiler's generated type ([`ToThrift`]), so the benchmarks can compare our
//! codec layer with the libraries called directly.

use std::collections::HashMap;

/// The datasets as the Apache Thrift compiler generates them for Rust, the Thrift baseline:
/// `thrift --gen rs -out . datasets.thrift` (0.17.0), from the `.thrift` these types emit,
/// less its unused `thrift::server` import (our `thrift` dependency has no server feature).
#[allow(missing_docs, unreachable_pub, dead_code, clippy::all)]
pub(crate) mod thrift_gen;

/// A small request, like the RPC benchmark's.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Small {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) tags: Vec<u32>,
    pub(crate) payload: Vec<u8>,
}

/// Severity of a log record.
#[rpc_core::message]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// One log record: strings and a timestamp.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LogRecord {
    pub(crate) timestamp_us: i64,
    pub(crate) level: Level,
    pub(crate) service: String,
    pub(crate) message: String,
    pub(crate) attrs: HashMap<String, String>,
}

/// A batch of log records.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LogBatch {
    pub(crate) records: Vec<LogRecord>,
}

/// A numeric-heavy mesh.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mesh {
    pub(crate) vertices: Vec<f64>,
    pub(crate) normals: Vec<f32>,
    pub(crate) indices: Vec<u32>,
}

/// A deep tree of nested messages.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tree {
    pub(crate) value: u32,
    pub(crate) label: String,
    pub(crate) children: Vec<Tree>,
}

/// `Small` for prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PSmall {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(string, tag = "2")]
    pub(crate) name: String,
    #[prost(uint32, repeated, tag = "3")]
    pub(crate) tags: Vec<u32>,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) payload: Vec<u8>,
}

/// `LogRecord` for prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PLogRecord {
    #[prost(int64, tag = "1")]
    pub(crate) timestamp_us: i64,
    #[prost(int32, tag = "2")]
    pub(crate) level: i32,
    #[prost(string, tag = "3")]
    pub(crate) service: String,
    #[prost(string, tag = "4")]
    pub(crate) message: String,
    #[prost(map = "string, string", tag = "5")]
    pub(crate) attrs: HashMap<String, String>,
}

/// `LogBatch` for prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PLogBatch {
    #[prost(message, repeated, tag = "1")]
    pub(crate) records: Vec<PLogRecord>,
}

/// `Mesh` for prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PMesh {
    #[prost(double, repeated, tag = "1")]
    pub(crate) vertices: Vec<f64>,
    #[prost(float, repeated, tag = "2")]
    pub(crate) normals: Vec<f32>,
    #[prost(uint32, repeated, tag = "3")]
    pub(crate) indices: Vec<u32>,
}

/// `Tree` for prost.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PTree {
    #[prost(uint32, tag = "1")]
    pub(crate) value: u32,
    #[prost(string, tag = "2")]
    pub(crate) label: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) children: Vec<PTree>,
}

/// A small request.
pub(crate) fn small() -> (Small, PSmall) {
    let s = Small { id: 42, name: "catalog/get".into(), tags: vec![1, 2, 3, 500], payload: vec![7; 64] };
    let p = PSmall { id: s.id, name: s.name.clone(), tags: s.tags.clone(), payload: s.payload.clone() };
    (s, p)
}

/// 100 log records.
pub(crate) fn logs() -> (LogBatch, PLogBatch) {
    let levels = [Level::Debug, Level::Info, Level::Warn, Level::Error];
    let records: Vec<LogRecord> = (0..100)
        .map(|i| LogRecord {
            timestamp_us: 1_764_000_000_000_000 + i * 1_337,
            level: levels[i as usize % 4],
            service: format!("svc-{}", i % 7),
            message: format!("request {i} served in {} ms by instance {}", i % 13, i % 5),
            attrs: [("trace".to_string(), format!("{i:016x}")), ("region".to_string(), "eu-west".to_string())].into(),
        })
        .collect();
    let p = PLogBatch {
        records: records
            .iter()
            .map(|r| PLogRecord {
                timestamp_us: r.timestamp_us,
                level: r.level as i32,
                service: r.service.clone(),
                message: r.message.clone(),
                attrs: r.attrs.clone(),
            })
            .collect(),
    };
    (LogBatch { records }, p)
}

/// A mesh of 1000 vertices.
pub(crate) fn mesh() -> (Mesh, PMesh) {
    let vertices: Vec<f64> = (0..3000).map(|i| f64::from(i) * 0.125 - 100.0).collect();
    let normals: Vec<f32> = (0..3000).map(|i| (i % 17) as f32 / 17.0).collect();
    let indices: Vec<u32> = (0..6000).map(|i| (i * 7) % 1000).collect();
    let p = PMesh { vertices: vertices.clone(), normals: normals.clone(), indices: indices.clone() };
    (Mesh { vertices, normals, indices }, p)
}

/// A tree 20 levels deep with two leaves per level.
pub(crate) fn tree() -> (Tree, PTree) {
    let leaf = |v: u32| Tree { value: v, label: format!("leaf {v}"), children: vec![] };
    let t = (0..20).fold(leaf(0), |child, i| Tree {
        value: i,
        label: format!("node {i}"),
        children: vec![child, leaf(i * 2), leaf(i * 2 + 1)],
    });
    fn convert(t: &Tree) -> PTree {
        PTree { value: t.value, label: t.label.clone(), children: t.children.iter().map(convert).collect() }
    }
    let p = convert(&t);
    (t, p)
}

/// A dataset as the Thrift compiler's generated Rust type, with the same field ids and wire
/// types (`u32` as `i64`, `f32` as `double`, a `HashMap` as its `BTreeMap`).
pub(crate) trait ToThrift {
    type Generated: thrift::protocol::TSerializable;
    fn to_thrift(&self) -> Self::Generated;
}

impl ToThrift for Small {
    type Generated = thrift_gen::Small;
    fn to_thrift(&self) -> thrift_gen::Small {
        let tags: Vec<i64> = self.tags.iter().map(|&t| i64::from(t)).collect();
        thrift_gen::Small::new(self.id as i64, self.name.clone(), tags, self.payload.clone())
    }
}

impl ToThrift for LogBatch {
    type Generated = thrift_gen::LogBatch;
    fn to_thrift(&self) -> thrift_gen::LogBatch {
        let records: Vec<thrift_gen::LogRecord> = self
            .records
            .iter()
            .map(|r| {
                let attrs: std::collections::BTreeMap<String, String> =
                    r.attrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let level = thrift_gen::Level(r.level as i32);
                thrift_gen::LogRecord::new(r.timestamp_us, level, r.service.clone(), r.message.clone(), attrs)
            })
            .collect();
        thrift_gen::LogBatch::new(records)
    }
}

impl ToThrift for Mesh {
    type Generated = thrift_gen::Mesh;
    fn to_thrift(&self) -> thrift_gen::Mesh {
        let vertices: Vec<thrift::OrderedFloat<f64>> = self.vertices.iter().map(|&v| v.into()).collect();
        let normals: Vec<thrift::OrderedFloat<f64>> = self.normals.iter().map(|&n| f64::from(n).into()).collect();
        let indices: Vec<i64> = self.indices.iter().map(|&i| i64::from(i)).collect();
        thrift_gen::Mesh::new(vertices, normals, indices)
    }
}

impl ToThrift for Tree {
    type Generated = thrift_gen::Tree;
    fn to_thrift(&self) -> thrift_gen::Tree {
        let children: Vec<Box<thrift_gen::Tree>> = self.children.iter().map(|c| Box::new(c.to_thrift())).collect();
        thrift_gen::Tree::new(i64::from(self.value), self.label.clone(), children)
    }
}
