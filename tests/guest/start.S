/*
 * Entry points of the husk probe guest.
 *
 * pvh_start (0x100000): the PVH entry, named by the PVH ELF note in the
 *   PVH build. 32-bit protected mode, paging off, %ebx = hvm_start_info.
 *   It builds its own identity map, enters long mode and calls probe_main.
 * _start (0x100200): the 64-bit Linux boot protocol entry, the ELF entry
 *   point, and also where a bzImage's 64-bit entry lands (load address +
 *   0x200). Long mode, identity-mapped, %rsi = boot_params.
 *
 * Both arrive with interrupts disabled and keep them that way.
 */
#define BOOT_LINUX64 0
#define BOOT_PVH 1

	.section .text.start, "ax"
	.code32
	.global pvh_start
pvh_start:
	cli
	mov	%ebx, %esi			/* hvm_start_info, for probe_main */

	/* Identity-map 4 GiB with 2 MiB pages (no 1 GiB pages here). */
	mov	$pvh_pdpt + 3, %eax
	mov	%eax, pvh_pml4
	xor	%ecx, %ecx
1:	mov	%ecx, %eax
	shl	$12, %eax
	add	$pvh_pd + 3, %eax
	mov	%eax, pvh_pdpt(, %ecx, 8)
	inc	%ecx
	cmp	$4, %ecx
	jne	1b
	xor	%ecx, %ecx
2:	mov	%ecx, %eax
	shl	$21, %eax
	or	$0x83, %eax			/* present, writable, 2 MiB */
	mov	%eax, pvh_pd(, %ecx, 8)
	mov	%ecx, %eax
	shr	$11, %eax
	mov	%eax, pvh_pd + 4(, %ecx, 8)
	inc	%ecx
	cmp	$2048, %ecx
	jne	2b

	mov	%cr4, %eax
	or	$0x20, %eax			/* PAE */
	mov	%eax, %cr4
	mov	$pvh_pml4, %eax
	mov	%eax, %cr3
	mov	$0xc0000080, %ecx		/* EFER */
	rdmsr
	or	$0x100, %eax			/* LME */
	wrmsr
	mov	%cr0, %eax
	or	$0x80000001, %eax		/* PG | PE */
	mov	%eax, %cr0
	lgdt	pvh_gdt_desc
	ljmp	$8, $pvh_long

	.code64
pvh_long:
	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	lea	stack_top(%rip), %rsp
	mov	%esi, %edi			/* zero-extends hvm_start_info */
	mov	$BOOT_PVH, %esi
	call	probe_main
3:	jmp	3b

	.org	0x200
	.global _start
_start:
	cli
	lea	stack_top(%rip), %rsp
	mov	%rsi, %rdi			/* boot_params */
	mov	$BOOT_LINUX64, %esi
	call	probe_main
4:	jmp	4b

	.section .rodata
	.balign 8
pvh_gdt:
	.quad	0
	.quad	0x00af9b000000ffff		/* 64-bit code */
	.quad	0x00cf93000000ffff		/* flat data */
pvh_gdt_desc:
	.word	pvh_gdt_desc - pvh_gdt - 1
	.long	pvh_gdt

	.section .bss
	.balign 4096
pvh_pml4:
	.skip	4096
pvh_pdpt:
	.skip	4096
pvh_pd:
	.skip	4096 * 4
	.balign 16
stack:
	.skip	16384
stack_top:

	.section .note.GNU-stack, "", @progbits
