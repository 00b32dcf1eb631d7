//! Shared helpers of the end-to-end scenarios in `tests/tests/`: KVM probing
//! with the SKIP convention (`ftvm_vmm::kvm_or_skip`), and a TCP proxy that can hold or delay one
//! direction of a channel (the tests' way to control when ACKs arrive).

pub use ftvm_testkit::proxy;

pub use ftvm_vmm::kvm_or_skip;
