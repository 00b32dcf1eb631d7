//! The channel wire decoder: any bytes give frames or a `DecodeError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ftvm_wire::peek_frame_len(data);
    let mut rest = data;
    while let Ok((_frame, used)) = ftvm_wire::decode(rest) {
        if used == 0 || used > rest.len() {
            panic!("decode consumed {used} of {} bytes", rest.len());
        }
        rest = &rest[used..];
    }
});
