//! The guest side of `docs/guest-abi.md`: the definition shared with the
//! VMM (crate `ftvm-guest-abi`).

pub use ftvm_guest_abi::*;
