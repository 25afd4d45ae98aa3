//! One `#[message]` type, every codec: round trips (fixed and property-based), method results,
//! hostile input, and a `#[service]` called with each codec over a real socket.

mod common;

use bytes::BytesMut;
use common::messages::{Level, Point, Shape};
use proptest::prelude::*;
use rpc_core::{Channel, Codec, CodecErrorKind, Server};
use std::collections::{BTreeMap, HashMap};

/// Every supported field type.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Everything {
    pub flag: bool,
    pub i8v: i8,
    pub i16v: i16,
    pub i32v: i32,
    pub i64v: i64,
    pub u8v: u8,
    pub u16v: u16,
    pub u32v: u32,
    pub u64v: u64,
    pub f32v: f32,
    pub f64v: f64,
    pub text: String,
    pub blob: Vec<u8>,
    pub numbers: Vec<i64>,
    pub names: Vec<String>,
    pub points: Vec<Point>,
    pub blobs: Vec<Vec<u8>>,
    pub by_name: HashMap<String, i32>,
    pub by_id: BTreeMap<u32, Point>,
    pub maybe: Option<i32>,
    pub maybe_text: Option<String>,
    pub maybe_point: Option<Point>,
    pub origin: Point,
    pub level: Level,
    pub shape: Shape,
    #[tag = 100]
    pub shapes: Vec<Shape>,
    pub shared: bytes::Bytes,
}

fn everything() -> Everything {
    Everything {
        flag: true,
        i8v: -8,
        i16v: i16::MIN,
        i32v: -1,
        i64v: i64::MIN,
        u8v: u8::MAX,
        u16v: u16::MAX,
        u32v: u32::MAX,
        u64v: u64::MAX,
        f32v: -1.5,
        f64v: std::f64::consts::PI,
        text: "ünïcode ✓".into(),
        blob: vec![0, 1, 255],
        numbers: vec![-1, 0, 1, i64::MAX],
        names: vec!["a".into(), String::new()],
        points: vec![Point { x: 1.0, y: -2.0 }, Point { x: 0.0, y: 0.0 }],
        blobs: vec![vec![], vec![7]],
        shared: bytes::Bytes::from_static(b"\x00shared"),
        by_name: [("one".to_string(), 1), ("minus".to_string(), -1)].into(),
        by_id: [(3, Point { x: 3.0, y: 3.0 })].into(),
        maybe: Some(0),
        maybe_text: None,
        maybe_point: Some(Point { x: -0.5, y: 0.25 }),
        origin: Point { x: 0.0, y: 0.0 },
        level: Level::Warn,
        shape: Shape::Code(0),
        shapes: vec![Shape::Label(String::new()), Shape::Circle(Point { x: 1.0, y: 1.0 })],
    }
}

fn round_trip<T: rpc_core::Message + PartialEq + std::fmt::Debug>(codec: Codec, value: &T) {
    let mut buf = BytesMut::new();
    codec.encode(value, &mut buf).unwrap_or_else(|e| panic!("{codec}: {e}"));
    assert_eq!(&codec.decode::<T>(&buf).unwrap_or_else(|e| panic!("{codec}: {e}")), value, "{codec}");
    let mut buf = BytesMut::new();
    codec.encode_reply(value, &mut buf).unwrap();
    assert_eq!(&codec.decode_reply::<T>(&buf).unwrap(), value, "{codec} as a reply");
}

#[test]
fn every_type_round_trips_through_every_codec() {
    for &codec in Codec::ALL {
        round_trip(codec, &everything());
        round_trip(codec, &Everything { maybe: None, maybe_point: None, level: Level::Debug, ..everything() });
        round_trip(codec, &Ok::<_, Point>(everything()));
        round_trip(codec, &Err::<Everything, Point>(Point { x: 0.0, y: 0.0 }));
        round_trip(codec, &Ok::<(), String>(()));
        round_trip(codec, &Err::<(), String>(String::new()));
        // Errors Thrift carries in a one-field exception.
        round_trip(codec, &Err::<u32, Shape>(Shape::Label("no route".into())));
        round_trip(codec, &Err::<u32, Level>(Level::Warn));
        round_trip(codec, &Err::<u32, Vec<u8>>(vec![0, 255]));
        round_trip(codec, &Err::<u32, (String, i32)>(("busy".into(), -1)));
        round_trip(codec, &());
        round_trip(codec, &Some(0u64));
        round_trip(codec, &Vec::<Shape>::new());
        round_trip(codec, &("pair".to_string(), 2u16));
    }
}

#[test]
fn field_numbers_follow_declaration_order_and_tag_overrides() {
    let mut buf = BytesMut::new();
    Codec::Protobuf.encode(&Shape::Code(5), &mut buf).unwrap();
    assert_eq!(&buf[..], [9 << 3, 5], "variant Code is field 9, a varint");
    let mut buf = BytesMut::new();
    Codec::Protobuf.encode(&Point { x: 0.0, y: 1.0 }, &mut buf).unwrap();
    assert_eq!(&buf[..], [(2 << 3) | 5, 0, 0, 0x80, 0x3f], "x is implicit zero; y is field 2, fixed32");
}

#[test]
fn an_error_thrift_cannot_throw_is_the_one_field_of_an_exception() {
    let mut buf = BytesMut::new();
    Codec::ThriftBinary.encode_reply(&Err::<u32, String>("x".into()), &mut buf).unwrap();
    // Field 1 is a struct (the exception) whose field 1 is the string; then two stops.
    assert_eq!(&buf[..], [12, 0, 1, 11, 0, 1, 0, 0, 0, 1, b'x', 0, 0]);
    // A bare string error (a peer that does not wrap) is read too; an error field of another
    // type is a decode error, never a success.
    let bare = Codec::ThriftBinary.decode_reply::<Result<u32, String>>(&[11, 0, 1, 0, 0, 0, 1, b'x', 0]);
    assert_eq!(bare.unwrap(), Err("x".to_string()));
    let wrong = Codec::ThriftBinary.decode_reply::<Result<(), String>>(&[8, 0, 1, 0, 0, 0, 5, 0]).unwrap_err();
    assert!(wrong.to_string().contains("the result's error has type I32"), "{wrong}");
    let mut buf = BytesMut::new();
    Codec::Protobuf.encode_reply(&Err::<u32, String>("x".into()), &mut buf).unwrap();
    assert_eq!(&buf[..], [(2 << 3) | 2, 1, b'x'], "protobuf carries the error itself as field 2");
    // An empty error is still an error: the emitted .proto declares the field `optional`, so a
    // protoc-generated peer sends it, and it reads back as one.
    let empty = Codec::Protobuf.decode_reply::<Result<u32, String>>(&[(2 << 3) | 2, 0]).unwrap();
    assert_eq!(empty, Err(String::new()));
}

/// Byte fields, alone and optional.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Blobs {
    pub maybe: Option<Vec<u8>>,
    pub one: Vec<u8>,
    /// Its own serde attribute is kept, not doubled.
    #[serde(default)]
    pub also: Option<Vec<u8>>,
}

#[test]
fn optional_bytes_are_a_byte_string_in_msgpack_and_may_be_left_out() {
    let mut buf = BytesMut::new();
    Codec::MsgPack.encode(&Blobs { maybe: Some(vec![1, 2]), one: vec![], also: None }, &mut buf).unwrap();
    assert!(buf.windows(4).any(|w| w == [0xc4, 2, 1, 2]), "bin 8 of two bytes in {buf:?}");
    for &codec in Codec::ALL {
        round_trip(codec, &Blobs { maybe: Some(vec![1, 2]), one: vec![3], also: Some(vec![]) });
        round_trip(codec, &Blobs { maybe: None, one: vec![], also: None });
    }
    // A map with only `one`: the optional field is absent.
    let only_one = Codec::MsgPack.decode::<Blobs>(b"\x81\xa3one\xc4\x01\x07").unwrap();
    assert_eq!(only_one, Blobs { maybe: None, one: vec![7], also: None });
}

#[test]
fn absent_fields_take_proto3_defaults_and_missing_messages_are_errors() {
    // An empty body: every scalar, list, map and option is absent.
    let err = Codec::Protobuf.decode::<Everything>(&[]).unwrap_err();
    assert!(err.to_string().contains("Everything.points") || err.to_string().contains("Everything.origin"), "{err}");
    let point = Codec::Protobuf.decode::<Point>(&[]).unwrap();
    assert_eq!(point, Point { x: 0.0, y: 0.0 });
    let err = Codec::ThriftBinary.decode::<Shape>(&[0]).unwrap_err();
    assert!(err.to_string().contains("none of its variants"), "{err}");
}

#[test]
fn wrongly_typed_and_malicious_input_is_a_typed_error() {
    let cases: &[(Codec, &[u8])] = &[
        // Field 12 (text) as a varint instead of a string.
        (Codec::Protobuf, &[12 << 3, 1]),
        // Invalid UTF-8 in a string.
        (Codec::Protobuf, &[(12 << 3) | 2, 2, 0xff, 0xfe]),
        // u8 field holding 300.
        (Codec::Protobuf, &[6 << 3, 0xac, 0x02]),
        // An enum value that does not exist.
        (Codec::Protobuf, &[0xc0, 0x01, 3]),
        // A list claiming 2^31-1 strings, then nothing.
        (Codec::ThriftBinary, &[15, 0, 15, 11, 0x7f, 0xff, 0xff, 0xff]),
        // A map of a negative size.
        (Codec::ThriftBinary, &[13, 0, 18, 11, 8, 0xff, 0xff, 0xff, 0xff]),
        // Compact: a string field claiming 2^32 bytes.
        (Codec::ThriftCompact, &[0xc8, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        // Compact: field 32767 (long form), then a header adding a delta to it.
        (Codec::ThriftCompact, &[0x05, 0xfe, 0xff, 0x03, 0x00, 0x15]),
        // The same inside a nested struct, then the delta after it ends.
        (Codec::ThriftCompact, &[0x0c, 0xfe, 0xff, 0x03, 0x00, 0x15]),
    ];
    for (codec, bytes) in cases {
        let err = codec.decode::<Everything>(bytes).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode, "{err}");
        assert_eq!(err.codec(), Some(*codec), "{err}");
    }
}

#[test]
fn thrift_lengths_counts_field_ids_and_utf8_are_checked_before_anything_is_allocated() {
    // A bare value travels as field 0 of a wrapper struct: type, id, length, bytes, stop.
    let hi = Codec::ThriftBinary.decode::<String>(&[11, 0, 0, 0, 0, 0, 2, b'h', b'i', 0]).unwrap();
    assert_eq!(hi, "hi");
    let cases: &[(Codec, &[u8], &str)] = &[
        (Codec::ThriftBinary, &[11, 0, 0, 0, 0, 0, 5, b'a', b'b'], "declared length 5 exceeds the 2 bytes left"),
        (Codec::ThriftBinary, &[11, 0, 0, 0xff, 0xff, 0xff, 0xfe], "negative length -2"),
        (Codec::ThriftBinary, &[11, 0, 0, 0, 0, 0, 2, 0xff, 0xfe, 0], "invalid UTF-8"),
        (Codec::ThriftBinary, &[11, 0, 0, 0, 0, 0, 2, b'h', b'i', 0, 7], "1 trailing bytes"),
        (Codec::ThriftCompact, &[0x08, 0, 5, b'a'], "declared length 5 exceeds the 1 bytes left"),
        (Codec::ThriftCompact, &[0x08, 0, 2, 0xc3, 0x28, 0], "invalid UTF-8"),
        (Codec::ThriftCompact, &[0x08, 0, 0xff, 0xff], "input ends before the message does"),
        (Codec::ThriftCompact, &[0x05, 0xfe, 0xff, 0x03, 0x00, 0x15], "field id 32767 plus delta 1 overflows"),
    ];
    for (codec, bytes, expected) in cases {
        let err = codec.decode::<String>(bytes).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode, "{err}");
        assert!(err.to_string().contains(expected), "{codec} {bytes:?}: {err}");
    }
    // A list or map whose declared count the bytes left cannot hold.
    let counts: &[(Codec, &[u8], &str)] = &[
        (
            Codec::ThriftBinary,
            &[15, 0, 0, 8, 0, 0, 0, 100, 0, 0, 0, 1, 0],
            "100 elements declared but only 5 bytes left",
        ),
        (Codec::ThriftCompact, &[0x09, 0, 0xf5, 100, 2, 0], "100 elements declared but only 2 bytes left"),
    ];
    for (codec, bytes, expected) in counts {
        let err = codec.decode::<Vec<u32>>(bytes).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode, "{err}");
        assert!(err.to_string().contains(expected), "{codec} {bytes:?}: {err}");
    }
}

/// A tree as deep as you like.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    pub value: u32,
    pub children: Vec<Tree>,
}

fn tree(depth: u32) -> Tree {
    (0..depth).fold(Tree { value: 0, children: vec![] }, |child, i| Tree { value: i, children: vec![child] })
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for &codec in Codec::ALL {
        round_trip(codec, &tree(40));
        let mut buf = BytesMut::new();
        codec.encode(&tree(300), &mut buf).unwrap();
        let err = codec.decode::<Tree>(&buf).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode, "{codec}: {err}");
    }
}

/// A linked list: a message that contains itself through a `Box`.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: i32,
    pub next: Option<Box<Node>>,
}

fn chain(len: i32) -> Node {
    (1..len).fold(Node { value: 0, next: None }, |next, value| Node { value, next: Some(Box::new(next)) })
}

#[test]
fn boxed_recursive_messages_round_trip_and_deep_ones_are_refused() {
    for &codec in Codec::ALL {
        round_trip(codec, &chain(40));
        round_trip(codec, &Box::new(chain(3)));
        let mut buf = BytesMut::new();
        codec.encode(&chain(300), &mut buf).unwrap();
        let err = codec.decode::<Node>(&buf).unwrap_err();
        assert_eq!(err.kind(), CodecErrorKind::Decode, "{codec}: {err}");
    }
    let mut idl = rpc_core::Idl::new("list");
    idl.add::<Node>();
    assert!(idl.to_proto().contains("optional Node next = 2;"), "{}", idl.to_proto());
    assert!(idl.to_thrift().contains("2: optional Node next_;"), "{}", idl.to_thrift());
}

/// Floats JSON reproduces exactly (serde_json's default parser may round the last digit).
fn float() -> impl Strategy<Value = f64> {
    any::<i32>().prop_map(|n| f64::from(n) / 8.0)
}

fn point() -> impl Strategy<Value = Point> {
    (float(), any::<i16>()).prop_map(|(x, y)| Point { x, y: f32::from(y) / 4.0 })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![point().prop_map(Shape::Circle), ".*".prop_map(Shape::Label), any::<i64>().prop_map(Shape::Code)]
}

prop_compose! {
    fn arb_everything()(
        ints in (any::<bool>(), any::<i8>(), any::<i16>(), any::<i32>(), any::<i64>(), any::<u8>(), any::<u16>(), any::<u32>(), any::<u64>()),
        floats in (any::<i16>().prop_map(|n| f32::from(n) / 4.0), float()),
        text in ".*",
        blob in proptest::collection::vec(any::<u8>(), 0..64),
        numbers in proptest::collection::vec(any::<i64>(), 0..8),
        names in proptest::collection::vec(".*", 0..4),
        points in proptest::collection::vec(point(), 0..4),
        blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..3),
        shared in proptest::collection::vec(any::<u8>(), 0..16).prop_map(bytes::Bytes::from),
        by_name in proptest::collection::hash_map(".*", any::<i32>(), 0..4),
        by_id in proptest::collection::btree_map(any::<u32>(), point(), 0..4),
        options in (any::<Option<i32>>(), proptest::option::of(".*"), proptest::option::of(point())),
        origin in point(),
        level in prop_oneof![Just(Level::Debug), Just(Level::Info), Just(Level::Warn)],
        shape in shape(),
        shapes in proptest::collection::vec(shape(), 0..4),
    ) -> Everything {
        let (flag, i8v, i16v, i32v, i64v, u8v, u16v, u32v, u64v) = ints;
        let (maybe, maybe_text, maybe_point) = options;
        Everything {
            flag, i8v, i16v, i32v, i64v, u8v, u16v, u32v, u64v, f32v: floats.0, f64v: floats.1, text, blob,
            numbers, names, points, blobs, shared, by_name, by_id, maybe, maybe_text, maybe_point, origin, level, shape,
            shapes,
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_values_round_trip_through_every_codec(value in arb_everything()) {
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            codec.encode(&value, &mut buf).unwrap();
            prop_assert_eq!(&codec.decode::<Everything>(&buf).unwrap(), &value, "{}", codec);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for &codec in Codec::ALL {
            let _ = codec.decode::<Everything>(&bytes);
            let _ = codec.decode_reply::<Result<Tree, Shape>>(&bytes);
        }
    }

    #[test]
    fn mutated_encodings_never_panic_any_decoder(value in arb_everything(), at in any::<usize>(), byte in any::<u8>()) {
        for &codec in Codec::ALL {
            let mut buf = BytesMut::new();
            codec.encode(&value, &mut buf).unwrap();
            let i = at % buf.len();
            buf[i] = byte;
            let _ = codec.decode::<Everything>(&buf);
            let _ = codec.decode::<Everything>(&buf[..i]);
        }
    }
}

/// A service whose types cover the Thrift method conventions.
#[rpc_core::service]
pub trait Store {
    /// Echoes a message.
    async fn echo(&self, value: Everything, level: Level) -> Everything;
    /// Finds a point or fails with the declared error.
    async fn find(&self, id: u32) -> Result<Point, Shape>;
    /// Returns nothing.
    async fn touch(&self) -> ();
    /// An optional result.
    async fn maybe(&self, some: bool) -> Option<String>;
}

struct MyStore;

impl Store for MyStore {
    async fn echo(&self, value: Everything, level: Level) -> Everything {
        Everything { level, ..value }
    }
    async fn find(&self, id: u32) -> Result<Point, Shape> {
        if id == 0 {
            Err(Shape::Label("no such point".into()))
        } else {
            Ok(Point { x: f64::from(id), y: 0.0 })
        }
    }
    async fn touch(&self) {}
    async fn maybe(&self, some: bool) -> Option<String> {
        some.then(String::new)
    }
}

#[tokio::test]
async fn a_service_answers_every_codec_over_a_socket() {
    let server = Server::builder().add_service(StoreServer::new(MyStore)).start("127.0.0.1:0").await.unwrap();
    for &codec in Codec::ALL {
        let channel = Channel::builder(server.local_addr().to_string()).codec(codec).connect().await.unwrap();
        let client = StoreClient::new(channel);
        let back = client.echo(everything(), Level::Info).await.unwrap();
        assert_eq!(back, Everything { level: Level::Info, ..everything() }, "{codec}");
        assert_eq!(client.find(2).await.unwrap(), Ok(Point { x: 2.0, y: 0.0 }), "{codec}");
        assert_eq!(client.find(0).await.unwrap(), Err(Shape::Label("no such point".into())), "{codec}");
        client.touch().await.unwrap();
        assert_eq!(client.maybe(true).await.unwrap(), Some(String::new()), "{codec}");
        assert_eq!(client.maybe(false).await.unwrap(), None, "{codec}");
    }
    server.shutdown(std::time::Duration::from_secs(1)).await.unwrap();
}

#[test]
fn a_json_value_body_is_refused_by_schema_codecs_with_a_clear_error() {
    let mut buf = BytesMut::new();
    let err = Codec::Protobuf.encode(&serde_json::json!({"id": 1}), &mut buf).unwrap_err();
    assert!(err.to_string().contains("no schema"), "{err}");
}

/// A message with messages inside, to see how a second occurrence merges.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub start: Point,
    pub via: Option<Point>,
    pub stops: Vec<Point>,
    pub name: String,
}

#[test]
fn protobuf_merges_a_message_field_that_appears_twice() {
    let first = Route {
        start: Point { x: 1.0, y: 0.0 },
        via: Some(Point { x: 5.0, y: 0.0 }),
        stops: vec![Point { x: 7.0, y: 7.0 }],
        name: "first".into(),
    };
    let second = Route {
        start: Point { x: 0.0, y: 2.0 },
        via: Some(Point { x: 0.0, y: 6.0 }),
        stops: vec![Point { x: 8.0, y: 8.0 }],
        name: "second".into(),
    };
    // Concatenated encodings decode as one message, merged (the protobuf spec's rule).
    let mut buf = BytesMut::new();
    Codec::Protobuf.encode(&first, &mut buf).unwrap();
    Codec::Protobuf.encode(&second, &mut buf).unwrap();
    let merged: Route = Codec::Protobuf.decode(&buf).unwrap();
    assert_eq!(merged.start, Point { x: 1.0, y: 2.0 }, "message fields merge field by field");
    assert_eq!(merged.via, Some(Point { x: 5.0, y: 6.0 }), "so do optional ones");
    assert_eq!(merged.stops, [Point { x: 7.0, y: 7.0 }, Point { x: 8.0, y: 8.0 }], "lists concatenate");
    assert_eq!(merged.name, "second", "scalars: the last one wins");
}

/// Floats that JSON has no number for.
#[rpc_core::message]
#[derive(Clone, Debug)]
pub struct Reading {
    pub value: f64,
    pub peak: f32,
    pub floor: Option<f64>,
    pub samples: Vec<f64>,
}

#[test]
fn nan_and_infinities_survive_every_codec_and_json_spells_them_as_proto3_does() {
    let reading = Reading {
        value: f64::NAN,
        peak: f32::INFINITY,
        floor: Some(f64::NEG_INFINITY),
        samples: vec![1.5, f64::NAN, -0.25],
    };
    for codec in [Codec::Protobuf, Codec::ThriftBinary, Codec::ThriftCompact, Codec::Json, Codec::MsgPack] {
        let mut buf = BytesMut::new();
        codec.encode(&reading, &mut buf).unwrap();
        let back: Reading = codec.decode(&buf).unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert!(back.value.is_nan(), "{codec}: {back:?}");
        assert_eq!((back.peak, back.floor), (f32::INFINITY, Some(f64::NEG_INFINITY)), "{codec}");
        assert_eq!((back.samples[0], back.samples[2]), (1.5, -0.25), "{codec}");
        assert!(back.samples[1].is_nan(), "{codec}: {back:?}");
    }
    let mut json = BytesMut::new();
    Codec::Json.encode(&reading, &mut json).unwrap();
    let text = std::str::from_utf8(&json).unwrap();
    assert_eq!(
        text, r#"{"value":"NaN","peak":"Infinity","floor":"-Infinity","samples":[1.5,"NaN",-0.25]}"#,
        "proto3 JSON's spelling, not null"
    );
    let finite: Reading = Codec::Json.decode(br#"{"value":2,"peak":"3.5","floor":null,"samples":[]}"#).unwrap();
    assert_eq!((finite.value, finite.peak, finite.floor), (2.0, 3.5, None), "numbers, numbers in strings, null");
}
