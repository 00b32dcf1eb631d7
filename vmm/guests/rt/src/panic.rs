//! Panics print through the console and stop the VM with exit code 101.

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::println!("guest panic: {}", info);
    crate::exit(crate::abi::PANIC_EXIT_CODE)
}
