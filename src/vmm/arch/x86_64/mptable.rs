//! Intel MultiProcessor Specification 1.4 tables, so the guest finds its
//! processors, the IOAPIC and the ISA interrupt routing.

use crate::vmm::kvm::memory::GuestMem;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, MAX_VCPUS, MPTABLE_START};

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (1 to {max})", max = MAX_VCPUS)]
    TooManyCpus(u8),
    #[error("cannot write the MP table to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The highest IOAPIC input pin; the IOAPIC has 24.
pub const IRQ_MAX: u8 = 23;

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU, APIC
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

/// Bytes the whole MP table takes for `num_cpus` processors.
pub fn table_size(num_cpus: u8) -> usize {
    let small_entries = 1 /* bus */ + 1 /* ioapic */ + (IRQ_MAX as usize + 1) + 2 /* lint */;
    FLOATING_LEN + HEADER_LEN + num_cpus as usize * CPU_ENTRY_LEN + small_entries * SMALL_ENTRY_LEN
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer followed by the configuration table, as
/// they are laid out at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = base + FLOATING_LEN as u64;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = (HEADER_LEN + entries.len()) as u16;
    let mut table = Vec::with_capacity(table_len as usize);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC, 0]); // checksum filled below
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_LEN + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    debug_assert_eq!(out.len(), table_size(num_cpus));
    Ok(out)
}

/// Writes the MP table into the EBDA.
pub fn setup_mptable(mem: &GuestMem, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, MPTABLE_START)?;
    debug_assert!(MPTABLE_START + bytes.len() as u64 <= EBDA_START + 1024);
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// Parses the table the way the probe guest and Linux do.
    fn cpus_in(bytes: &[u8], base: u64) -> (usize, u8) {
        assert_eq!(&bytes[0..4], b"_MP_");
        assert_eq!(sum(&bytes[0..16]), 0);
        let phys = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        let t = &bytes[(phys - base) as usize..];
        assert_eq!(&t[0..4], b"PCMP");
        let len = u16::from_le_bytes([t[4], t[5]]) as usize;
        assert_eq!(sum(&t[..len]), 0);
        let count = u16::from_le_bytes([t[34], t[35]]);
        let mut off = HEADER_LEN;
        let (mut cpus, mut bsp) = (0, 0xff);
        for _ in 0..count {
            match t[off] {
                0 => {
                    cpus += 1;
                    if t[off + 3] & CPU_BSP != 0 {
                        bsp = t[off + 1];
                    }
                    off += CPU_ENTRY_LEN;
                }
                1..=4 => off += SMALL_ENTRY_LEN,
                x => panic!("bad entry type {x}"),
            }
        }
        assert_eq!(off, len);
        (cpus, bsp)
    }

    #[test]
    fn table_lists_every_cpu_with_bsp_first() {
        for n in [1u8, 2, 4, 32] {
            let b = build(n, MPTABLE_START).unwrap();
            assert_eq!(b.len(), table_size(n));
            assert_eq!(cpus_in(&b, MPTABLE_START), (n as usize, 0));
        }
    }

    #[test]
    fn biggest_table_fits_in_ebda() {
        assert!(table_size(MAX_VCPUS) <= 1024);
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(MAX_VCPUS + 1, MPTABLE_START).is_err());
    }

    #[test]
    fn written_to_guest_memory() {
        let m = crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&m, 3).unwrap();
        let mut buf = vec![0u8; table_size(3)];
        m.read_slice(&mut buf, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(cpus_in(&buf, MPTABLE_START).0, 3);
    }
}
