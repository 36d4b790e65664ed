//! Any bytes as a Redis reply: a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_gateway::queue::resp::read_reply;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut input = data;
    let _ = rt.block_on(read_reply(&mut input));
});
