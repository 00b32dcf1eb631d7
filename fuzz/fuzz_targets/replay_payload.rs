//! Replay-side parsing of every entry kind (`ftvm_vmm::payload`): whatever
//! payload an entry of any kind carries, the decoders the replayer uses
//! (input prefix, output record, interrupt vector, checkpoint record) and
//! `describe_entry` give a value or `None`, never a panic; what decodes
//! re-encodes to the same value; a description stays short however long the
//! payload.
#![no_main]

use ftvm_vmm::log::is_vmm_kind;
use ftvm_vmm::payload::{
    CheckpointRecord, INPUT_PREFIX_LEN, OutputRecord, describe_entry, input_port,
    interrupt_payload, interrupt_vector,
};
use ftvm_wire::Kind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&k, payload)) = data.split_first() else {
        return;
    };
    let kind = Kind::ALL[usize::from(k) % Kind::ALL.len()];
    let _ = is_vmm_kind(kind);
    let text = describe_entry(kind, payload);
    assert!(
        text.len() <= 200,
        "description of {} bytes: {text}",
        payload.len()
    );

    // Inputs: the port, then the device data (`ExitCtx::input` on replay).
    let port = input_port(payload);
    match payload.get(INPUT_PREFIX_LEN..) {
        Some(_) => assert!(port.is_some()),
        None => assert!(payload.len() < INPUT_PREFIX_LEN),
    }
    // Outputs (`ExitCtx::output` on replay).
    if let Some(o) = OutputRecord::from_bytes(payload) {
        assert_eq!(payload.len(), OutputRecord::LEN);
        assert_eq!(OutputRecord::from_bytes(&o.to_bytes()), Some(o));
    }
    // Interrupts (`Vm::interrupt` on replay).
    if let Some(v) = interrupt_vector(payload) {
        assert_eq!(interrupt_vector(&interrupt_payload(v)), Some(v));
    }
    // Checkpoints (`Vm::verify_checkpoint`): only exact encodings decode.
    if let Some(c) = CheckpointRecord::from_bytes(payload) {
        assert_eq!(&c.to_bytes()[..], payload);
        let _ = c.to_string();
    }
});
