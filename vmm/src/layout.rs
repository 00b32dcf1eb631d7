//! The guest-physical memory map, boot-info layout and port numbers: the
//! shared definition in `ftvm-guest-abi` (normative: `docs/guest-abi.md`).

pub use ftvm_guest_abi::*;
