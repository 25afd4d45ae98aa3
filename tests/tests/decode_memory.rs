//! Decoding hostile input never reserves memory for elements its bytes do not hold: measured
//! with a counting allocator, so this file has a single test (tests in one binary share it).

use rpc_core::Codec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System` has too.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A tree as deep as you like.
#[rpc_core::message]
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    pub value: u32,
    pub children: Vec<Tree>,
}

/// `depth` nested trees whose `children` each declare `u32::MAX` (or `i32::MAX`) elements and
/// hold one, then the input ends.
fn lying_tree(codec: Codec, depth: usize) -> Vec<u8> {
    let level: &[u8] = match codec {
        // A map of two entries: "value": 0, "children": array32 of 2^32 - 1.
        Codec::MsgPack => b"\x82\xa5value\x00\xa8children\xdd\xff\xff\xff\xff",
        // Field 2, a list of 2^31 - 1 structs.
        Codec::ThriftBinary => &[15, 0, 2, 12, 0x7f, 0xff, 0xff, 0xff],
        // Field 2 (delta 2, list), a list of structs of 2^31 - 1.
        Codec::ThriftCompact => &[0x29, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07],
        // Field 2, a message of 2^31 - 1 bytes.
        Codec::Protobuf => &[0x12, 0xff, 0xff, 0xff, 0xff, 0x07],
        _ => b"{\"value\":0,\"children\":[",
    };
    level.repeat(depth)
}

/// `depth` nested trees whose `children` each declare 1024 elements, which the bytes left could
/// hold, then 1024 bytes that are each an empty struct or map marker.
fn nested_counts_that_each_fit(codec: Codec, depth: usize) -> Vec<u8> {
    let (level, element): (&[u8], u8) = match codec {
        Codec::MsgPack => (b"\x82\xa5value\x00\xa8children\xdc\x04\x00", 0x80),
        Codec::ThriftBinary => (&[15, 0, 2, 12, 0, 0, 4, 0], 0),
        Codec::ThriftCompact => (&[0x29, 0xfc, 0x80, 0x08], 0),
        Codec::Protobuf => (&[0x12, 0x80, 0x08], 0),
        _ => (b"{\"value\":0,\"children\":[", b'{'),
    };
    let mut bytes = level.repeat(depth);
    bytes.extend(std::iter::repeat_n(element, 1024));
    bytes
}

#[test]
fn lying_element_counts_reserve_at_most_what_the_input_holds() {
    for &codec in Codec::ALL {
        check(codec, &lying_tree(codec, 100));
        check(codec, &nested_counts_that_each_fit(codec, 64));
    }
}

/// Decodes `bytes`, which must fail, and checks the most memory live meanwhile.
fn check(codec: Codec, bytes: &[u8]) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let err = codec.decode::<Tree>(bytes).unwrap_err();
    let reserved = PEAK.load(Ordering::Relaxed) - before;
    // One element per input byte at most: a `Tree` is 32 bytes, plus the error's message.
    let bound = bytes.len() * std::mem::size_of::<Tree>() + 4096;
    assert!(reserved <= bound, "{codec}: {reserved} bytes reserved for {} bytes of input ({err})", bytes.len());
}
