//! A signature the `#[service]` macro cannot support is a compile error at its span.

#[test]
fn unsupported_signatures_fail_with_a_pointed_message() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
