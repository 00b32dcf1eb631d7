//! Control frames: any payload under any kind parses or gives a `ControlError`, never a
//! panic; what parses re-encodes.
#![no_main]

use ftvm_wire::Kind;
use ftvm_wire::control::Control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&k, payload)) = data.split_first() else {
        return;
    };
    let Some(kind) = Kind::from_u8(k) else { return };
    if let Some(Ok(c)) = Control::parse(kind, payload) {
        let _ = c.payload();
    }
});
