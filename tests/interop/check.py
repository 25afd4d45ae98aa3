"""Interop peer for tests/tests/interop.rs, using the reference implementations.

usage: check.py FORMAT GEN_DIR OURS_FILE THEIRS_FILE

Parses OURS_FILE (written by our codec) with the reference library and compares it with the
value built here; then writes that value with the reference library to THEIRS_FILE, which the
Rust side decodes with our codec. FORMAT: protobuf, thrift-binary, thrift-compact, msgpack, json.
"""

import json
import sys

FORMAT, GEN_DIR, OURS, THEIRS = sys.argv[1:5]
sys.path.insert(0, GEN_DIR)

U64_MAX = 2**64 - 1


def fail(message):
    print(f"{FORMAT}: {message}", file=sys.stderr)
    sys.exit(1)


def protobuf_value():
    import interop_pb2 as pb

    m = pb.Sample(
        flag=True, small=-8, medium=-32768, number=-1, big=-(2**63), octet=255, word=65535, count=2**32 - 1,
        huge=U64_MAX, ratio=-1.5, precise=3.25, text="ünïcode ✓", blob=b"\x00\x01\xff",
        numbers=[-1, 0, 1, 2**63 - 1], names=["a", ""], points=[pb.Point(x=1.0, y=-2.0), pb.Point()],
        level=pb.LEVEL_WARN, origin=pb.Point(),
    )
    m.by_name["one"] = 1
    m.by_name["minus"] = -1
    m.by_id[3].x = 3.0
    m.by_id[3].y = 3.0
    m.maybe = 0
    m.shape.code = 0
    m.shapes.add().label = ""
    m.shapes.add().circle.x = 1.0
    m.shared_bytes = b"\x07"
    m.blob_list.extend([b"", b"\x01"])
    m.maybe_point.x = 2.0
    m.maybe_blob = b"\x02"
    return m, lambda data: pb.Sample.FromString(data), lambda v: v.SerializeToString()


def thrift_value(compact):
    from interop import ttypes as t
    from thrift.protocol import TBinaryProtocol, TCompactProtocol
    from thrift.TSerialization import deserialize, serialize

    factory = TCompactProtocol.TCompactProtocolFactory() if compact else TBinaryProtocol.TBinaryProtocolFactory()
    v = t.Sample(
        flag=True, small=-8, medium=-32768, number=-1, big=-(2**63), octet=255, word=65535, count=2**32 - 1,
        huge=-1, ratio=-1.5, precise=3.25, text="ünïcode ✓", blob=b"\x00\x01\xff",
        numbers=[-1, 0, 1, 2**63 - 1], names=["a", ""], points=[t.Point(x=1.0, y=-2.0), t.Point(x=0.0, y=0.0)],
        by_name={"one": 1, "minus": -1}, by_id={3: t.Point(x=3.0, y=3.0)}, maybe=0, maybe_text=None,
        origin=t.Point(x=0.0, y=0.0), level=t.Level.Warn, shape=t.Shape(code=0),
        shapes=[t.Shape(label=""), t.Shape(circle=t.Point(x=1.0, y=0.0))],
        shared_bytes=b"\x07", blob_list=[b"", b"\x01"], no_numbers=[], no_entries={},
        maybe_point=t.Point(x=2.0, y=0.0), maybe_blob=b"\x02",
    )
    return v, lambda data: deserialize(t.Sample(), data, factory), lambda value: serialize(value, factory)


def plain_value(fmt):
    point = lambda x, y: {"x": x, "y": y}
    blob = b"\x00\x01\xff" if fmt == "msgpack" else [0, 1, 255]
    return {
        "flag": True, "small": -8, "medium": -32768, "number": -1, "big": -(2**63), "octet": 255, "word": 65535,
        "count": 2**32 - 1, "huge": U64_MAX, "ratio": -1.5, "precise": 3.25, "text": "ünïcode ✓", "blob": blob,
        "numbers": [-1, 0, 1, 2**63 - 1], "names": ["a", ""], "points": [point(1.0, -2.0), point(0.0, 0.0)],
        "by_name": {"one": 1, "minus": -1}, "by_id": {(3 if fmt == "msgpack" else "3"): point(3.0, 3.0)},
        "maybe": 0, "maybe_text": None, "origin": point(0.0, 0.0), "level": "Warn", "shape": {"Code": 0},
        "shapes": [{"Label": ""}, {"Circle": point(1.0, 0.0)}],
        "shared_bytes": b"\x07" if fmt == "msgpack" else [7], "blob_list": [[], [1]], "no_numbers": [],
        "no_entries": {}, "maybe_point": point(2.0, 0.0), "maybe_blob": b"\x02" if fmt == "msgpack" else [2],
    }


def main():
    with open(OURS, "rb") as f:
        ours = f.read()
    if FORMAT == "protobuf":
        expected, parse, write = protobuf_value()
    elif FORMAT.startswith("thrift"):
        expected, parse, write = thrift_value(FORMAT == "thrift-compact")
    elif FORMAT == "msgpack":
        import msgpack

        expected = plain_value("msgpack")
        parse = lambda data: msgpack.unpackb(data, raw=False, strict_map_key=False)
        write = lambda v: msgpack.packb(v, use_bin_type=True)
    elif FORMAT == "json":
        expected = plain_value("json")
        parse = lambda data: json.loads(data.decode("utf-8"))
        write = lambda v: json.dumps(v).encode("utf-8")
    else:
        fail(f"unknown format {FORMAT}")
    got = parse(ours)
    if got != expected:
        fail(f"our bytes parse to\n{got}\nexpected\n{expected}")
    if FORMAT == "protobuf" and got.UnknownFields():
        fail("our bytes have fields the schema does not know")
    with open(THEIRS, "wb") as f:
        f.write(write(expected))


main()
