//! Messages the fuzz targets decode: every supported field type, nesting and a recursive type,
//! so a decoder's every path is reachable from the input bytes.

use rpc_core::Codec;
use std::collections::{BTreeMap, HashMap};

/// A C-like enum.
#[rpc_core::message]
#[derive(Debug, PartialEq)]
pub enum Level {
    Debug,
    Info,
    Warn = 7,
}

/// A oneof / union.
#[rpc_core::message]
#[derive(Debug, PartialEq)]
pub enum Shape {
    Tree(Tree),
    Label(String),
    Code(i64),
}

/// A recursive message.
#[rpc_core::message]
#[derive(Debug, PartialEq)]
pub struct Tree {
    pub value: u32,
    pub children: Vec<Tree>,
}

/// Every field type.
#[rpc_core::message]
#[derive(Debug, PartialEq)]
pub struct Everything {
    pub flag: bool,
    pub small: i8,
    pub medium: i16,
    pub number: i32,
    pub big: i64,
    pub octet: u8,
    pub word: u16,
    pub count: u32,
    pub huge: u64,
    pub ratio: f32,
    pub precise: f64,
    pub text: String,
    pub blob: Vec<u8>,
    pub numbers: Vec<i64>,
    pub names: Vec<String>,
    pub blobs: Vec<Vec<u8>>,
    pub by_name: HashMap<String, i32>,
    pub by_id: BTreeMap<u32, Tree>,
    pub maybe: Option<i32>,
    pub level: Level,
    pub shape: Shape,
    pub shapes: Vec<Shape>,
    pub tree: Tree,
}

/// Decodes `data` as a message and as a method result; a panic is the bug being looked for.
pub fn decode(codec: Codec, data: &[u8]) {
    let _ = codec.decode::<Everything>(data);
    let _ = codec.decode_reply::<Result<Tree, Shape>>(data);
}
