//! `spin` (hostile): never returns. The host's epoch deadline must stop it.

use weir_sdk::{Error, Value};

/// Loops forever without calling the host.
#[weir_sdk::processor(name = "spin", timeout_ms = 500)]
fn process(_state: Value) -> Result<Value, Error> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
