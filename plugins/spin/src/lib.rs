//! `spin` (hostile): never returns. The host's epoch deadline must stop it.

use weir_sdk::{Error, Value};

/// Loops forever without calling the host. Its fuel is the ceiling (a trillion, over half a
/// minute of this loop on a fast core), so that its timeout is what stops it: the default
/// budget (10 billion) runs out in under half a second on some machines.
#[weir_sdk::processor(name = "spin", timeout_ms = 500, fuel = 1000000000000)]
fn process(_state: Value) -> Result<Value, Error> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
