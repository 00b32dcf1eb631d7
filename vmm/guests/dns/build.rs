// Links the guest with the runtime's linker script (flat image at 0x1_0000).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/../rt/link.ld");
    println!("cargo:rerun-if-changed={dir}/../rt/link.ld");
}
