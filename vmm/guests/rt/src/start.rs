//! Start-up, the image header, exception stubs and the timer handler.
//!
//! The VMM builds the GDT, TSS and IDT and starts the guest directly at its
//! service ring (on PVM hosts an `iretq` from ring 0 to ring 3 does not carry
//! IOPL 3 over, so the runtime never switches rings itself). The header at
//! image offset 8 tells the VMM where the handlers are.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
    .code64
_start:
    // The image header the VMM reads (docs/guest-abi.md §3).
    jmp 1f
    .balign 8
    .ascii "FTVMIMG1"
    .quad ftvm_fault_table
    .quad ftvm_timer_entry
    .quad __bss_start
    .quad __bss_end
1:
    // Ring 3 (or 0), rsp = main stack top, rdi = boot info, IF set.
    mov rbx, rdi
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    cld
    rep stosb
    mov rdi, rbx
    and rsp, -16
    call ftvm_rt_main
    ud2

    .section .text.ftvm_traps, "ax"
    .macro FTVM_FAULT_NOERR n
ftvm_fault_\n:
    push 0
    push \n
    jmp ftvm_fault_common
    .endm
    .macro FTVM_FAULT_ERR n
ftvm_fault_\n:
    push \n
    jmp ftvm_fault_common
    .endm

    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    FTVM_FAULT_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    FTVM_FAULT_ERR \n
    .endr

ftvm_fault_common:
    // [rsp] = vector, error, rip, cs, rflags, rsp, ss: the VMM reads them.
    mov eax, dword ptr [rsp]
    mov dx, 0x12
    out dx, eax
4:
    hlt
    jmp 4b

    .global ftvm_timer_entry
ftvm_timer_entry:
    lock inc qword ptr [rip + FTVM_TICKS]
    iretq

    .section .rodata.ftvm_traps, "a"
    .balign 8
    .global ftvm_fault_table
ftvm_fault_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad ftvm_fault_\n
    .endr
"#
);
