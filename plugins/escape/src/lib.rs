//! `escape` (hostile): tries to read host files, list directories, read the environment and
//! the arguments, and open a network connection, and reports what it got. With no grants,
//! every attempt must fail or come back empty.

use std::io::Read;

use serde::Serialize;
use weir_sdk::{Error, Value};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// Content read from any file, or the error message.
    file: Result<String, String>,
    /// Entries of `/`, or the error.
    root_listing: Result<Vec<String>, String>,
    /// Every environment variable the guest can see.
    env: Vec<(String, String)>,
    /// The guest's arguments.
    args: Vec<String>,
    /// A connection attempt to a host port.
    network: Result<String, String>,
}

/// Tries to escape the sandbox and reports what it found.
#[weir_sdk::processor(name = "escape")]
fn process(_state: Value) -> Result<Report, Error> {
    let file = [
        "/etc/passwd",
        "/etc/hostname",
        "Cargo.toml",
        "./escape.wasm",
    ]
    .iter()
    .map(|path| {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map(|_| text)
            .map_err(|e| format!("{path}: {e}"))
    })
    .find(Result::is_ok)
    .unwrap_or_else(|| Err("no file could be opened".to_string()));
    let root_listing = std::fs::read_dir("/")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .map_err(|e| e.to_string());
    let network = std::net::TcpStream::connect("127.0.0.1:22")
        .map(|_| "connected".to_string())
        .map_err(|e| e.to_string());
    Ok(Report {
        file,
        root_listing,
        env: std::env::vars().collect(),
        args: std::env::args().collect(),
        network,
    })
}
