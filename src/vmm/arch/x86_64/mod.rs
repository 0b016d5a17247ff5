//! x86_64 platform setup: memory layout, boot protocols, MP table,
//! descriptor tables, registers, CPUID and CPU templates.

pub mod boot;
pub mod cpu_template;
pub mod cpuid;
pub mod gdt;
pub mod kernel_check;
pub mod layout;
pub mod mptable;
pub mod regs;
