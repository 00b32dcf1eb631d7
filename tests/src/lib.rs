//! Shared helpers of the end-to-end scenarios in `tests/tests/`: KVM probing
//! with the SKIP convention, and a TCP proxy that can hold or delay one
//! direction of a channel (the tests' way to control when ACKs arrive).

pub mod proxy;

/// True if KVM is usable; otherwise prints `SKIP <test>: ...` and returns
/// false — or panics when `FTVM_REQUIRE` contains `kvm`.
pub fn kvm_or_skip(test: &str) -> bool {
    match ftvm_vmm::kvm_available() {
        Ok(()) => true,
        Err(why) => {
            let required =
                std::env::var("FTVM_REQUIRE").is_ok_and(|v| v.split(',').any(|r| r == "kvm"));
            assert!(
                !required,
                "{test}: KVM required (FTVM_REQUIRE) but not accessible: {why}"
            );
            println!("SKIP {test}: /dev/kvm not accessible ({why})");
            false
        }
    }
}
