#[weir_sdk::processor(name = "x")]
struct Process;

fn main() {}
