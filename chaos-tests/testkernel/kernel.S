/*
 * banger's test kernel: a few hundred bytes that Firecracker boots through its PVH entry
 * point. It prints a marker on COM1, then, by the kernel command line:
 *   banger.mode=reset (or nothing)  resets at once (i8042 command 0xfe): the VMM exits;
 *   banger.mode=wait                sleeps until Ctrl-Alt-Del arrives on the i8042 (IRQ 1
 *                                   through the 8259 PIC), prints a second marker, then
 *                                   resets: a graceful stop;
 *   banger.mode=hang                sleeps with interrupts off: only a kill stops it;
 *   banger.mode=echo                like wait, but prints a line for each Ctrl-Alt-Del and
 *                                   sleeps again: output that comes late, on demand.
 * Waiting is done in 64-bit mode with `hlt` and a real interrupt, so an idle test VM costs no
 * CPU (this host's software KVM fails with KVM_EXIT_INTERNAL_ERROR delivering an interrupt
 * to a 32-bit guest, and a polling guest burns ~70 % of a core).
 * Built by chaos-tests/build.rs with `as` and `ld`; no C, no libc.
 */

    .set COM1, 0x3f8

    /* PVH: Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18) gives the 32-bit entry point. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start

    .text
    .code32
    .globl _start
_start:
    cli
    lgdt gdt_desc
    ljmp $0x08, $flat32
flat32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $stack_top, %esp
    /* ebx holds the physical address of hvm_start_info. */
    mov %ebx, %ebp
    mov $booted, %esi
    call puts32

    /* cmdline_paddr is the u64 at offset 24 of hvm_start_info. */
    mov 24(%ebp), %esi
    test %esi, %esi
    jz reset32
scan:
    movb (%esi), %al
    test %al, %al
    jz reset32
    cmpl $0x74696177, (%esi)        /* "wait" */
    je to_long
    cmpl $0x676e6168, (%esi)        /* "hang": ignore Ctrl-Alt-Del, so only a kill stops it */
    je hang
    cmpl $0x6f686365, (%esi)        /* "echo" */
    je echo
    inc %esi
    jmp scan

echo:
    movl $1, echo_mode
    jmp to_long

hang:
    mov $hanging, %esi
    call puts32
    cli
11: hlt
    jmp 11b

reset32:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b

puts32:
    mov $COM1, %dx
2:  lodsb
    test %al, %al
    jz 3f
    out %al, %dx
    jmp 2b
3:  ret

to_long:
    /* Identity-map the first GiB with 2 MiB pages. */
    mov $pd, %edi
    xor %ecx, %ecx
4:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 4b
    mov $pd, %eax
    or $3, %eax
    mov %eax, pdpt
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx           /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    ljmp $0x18, $long64

    .code64
long64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $stack_top, %rsp

    /* An IDT whose 256 gates all point at `isr`. */
    lea idt(%rip), %rdi
    lea isr(%rip), %rax
    mov $256, %ecx
5:  mov %ax, (%rdi)
    movw $0x18, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    mov %rax, %rdx
    shr $16, %rdx
    mov %dx, 6(%rdi)
    shr $16, %rdx
    mov %edx, 8(%rdi)
    movl $0, 12(%rdi)
    add $16, %rdi
    loop 5b
    lidt idt_desc(%rip)

    /* 8259 PICs: vectors 0x20/0x28, cascade, 8086 mode; unmask IRQ 1 only. */
    mov $0x11, %al
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x01, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xfd, %al
    out %al, $0x21
    mov $0xff, %al
    out %al, $0xa1

    lea waiting(%rip), %rsi
    call puts64
    /* Check before sleeping: keys that arrived before the PIC was set up raised no interrupt.
     * `sti; hlt` takes an interrupt that comes right after the check only once halted. */
sleep:
    cli
    in $0x64, %al
    test $1, %al
    jnz 10f
    sti
    hlt
    jmp sleep
10:
    /* Drain the scancodes (Ctrl, Alt, Del); any key means stop. */
6:  in $0x60, %al
    in $0x64, %al
    test $1, %al
    jnz 6b
    cmpl $0, echo_mode(%rip)
    je 12f
    lea echoed(%rip), %rsi
    call puts64
    jmp sleep
12:
    lea stopping(%rip), %rsi
    call puts64
    mov $0xfe, %al
    out %al, $0x64
7:  hlt
    jmp 7b

isr:
    push %rax
    mov $0x20, %al
    out %al, $0x20                  /* EOI */
    pop %rax
    iretq

puts64:
    mov $COM1, %dx
8:  lodsb
    test %al, %al
    jz 9f
    out %al, %dx
    jmp 8b
9:  ret

    .section .rodata
booted:   .asciz "BANGER-TEST-KERNEL booted\n"
waiting:  .asciz "BANGER-TEST-KERNEL waiting for ctrl-alt-del\n"
hanging:  .asciz "BANGER-TEST-KERNEL hanging, ignoring ctrl-alt-del\n"
stopping: .asciz "BANGER-TEST-KERNEL got ctrl-alt-del, resetting\n"
echoed:   .asciz "BANGER-TEST-KERNEL echo\n"

    .data
    .balign 8
echo_mode: .long 0
    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: 32-bit code, flat */
    .quad 0x00cf92000000ffff        /* 0x10: data, flat */
    .quad 0x00af9a000000ffff        /* 0x18: 64-bit code */
gdt_desc:
    .word 4 * 8 - 1
    .long gdt
idt_desc:
    .word 256 * 16 - 1
    .quad idt

    .bss
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096
idt:  .skip 256 * 16
    .skip 4096
stack_top:
