/*
 * Entry of the husk probe guest.
 *
 * The VMM enters here in 64-bit long mode through the Linux 64-bit boot
 * protocol: paging on with an identity map, interrupts disabled, and %rsi
 * holding the guest-physical address of boot_params (the zero page).
 */
	.section .text.start, "ax"
	.global _start
	.code64
_start:
	cli
	lea	stack_top(%rip), %rsp
	mov	%rsi, %rdi
	call	probe_main
1:	jmp	1b

	.section .bss
	.balign 16
stack:
	.skip	16384
stack_top:

	.section .note.GNU-stack, "", @progbits
