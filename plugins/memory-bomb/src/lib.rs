//! `memory-bomb` (hostile): allocates and touches memory without bound. The host's memory
//! cap must stop it with a `resource` error.

use weir_sdk::{Error, Value};

/// Allocates 1 MiB blocks forever.
#[weir_sdk::processor(name = "memory-bomb")]
fn process(_state: Value) -> Result<Value, Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = vec![0xA5u8; 1 << 20];
        hoard.push(std::hint::black_box(block));
    }
}
