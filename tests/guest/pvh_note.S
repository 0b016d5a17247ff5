/*
 * The PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY): linked only into the PVH
 * build of the probe guest, so the VMM enters it at pvh_start.
 */
	.section .note.pvh, "a"
	.balign 4
	.long	4			/* name size */
	.long	4			/* descriptor size */
	.long	18			/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign 4
	.long	pvh_start

	.section .note.GNU-stack, "", @progbits
