//! Misusing `#[weir_sdk::processor]` is a compile error that points at the mistake, and every
//! documented option is accepted.

#[test]
fn misuse_is_a_spanned_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

#[test]
fn every_documented_option_compiles() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/pass/*.rs");
}
