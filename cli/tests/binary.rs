//! The `weir` binary itself, run as a user and as the host run it.
//!
//! These tests also make `cargo test --workspace` build the `weir` executable with the
//! workspace's test features, which the end-to-end tests in `tests/` then run instead of
//! building a second copy with other features (and so compiling wasmtime once more).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn weir(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the weir binary starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    // The child may exit before reading everything: a broken pipe is part of the test.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("the weir binary ends")
}

#[test]
fn version_prints_the_name_and_the_release() {
    let output = weir(&["--version"], b"");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_compile_child_without_a_request_exits_2_saying_what_it_lacked() {
    let output = weir(&[weir::COMPILE_PROCESS_ARG], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read the settings' length"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn a_compile_child_refuses_oversized_or_unreadable_settings() {
    let oversized = u64::MAX.to_le_bytes();
    let output = weir(&[weir::COMPILE_PROCESS_ARG], &oversized);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("settings of"));

    let mut garbage = 5u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{nope");
    let output = weir(&[weir::COMPILE_PROCESS_ARG], &garbage);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreadable settings"), "{stderr}");
    assert!(output.stdout.is_empty());
}
