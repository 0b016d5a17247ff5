//! Kernel and initrd loading, and the boot information a kernel reads:
//! the zero page (64-bit Linux boot protocol) or `hvm_start_info` (PVH).

use std::fs::File;
use std::io::{Seek, SeekFrom};

use crate::vmm::kvm::memory::GuestMem;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress};

use super::kernel_check::{check_kernel, CheckedImage, ImageFormat, KernelImageError};
use super::layout::*;
use super::mptable::{setup_mptable, MptableError};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image failed the checks made before it is loaded.
    #[error(transparent)]
    KernelImage(#[from] KernelImageError),
    #[error("cannot load the kernel: {0}")]
    KernelLoad(linux_loader::loader::Error),
    #[error("cannot read the initrd: {0}")]
    InitrdRead(std::io::Error),
    #[error("the initrd is empty")]
    InitrdEmpty,
    #[error("the initrd ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("cannot copy the initrd into guest memory: {0}")]
    InitrdLoad(vm_memory::GuestMemoryError),
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write the kernel command line: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error("cannot write boot information to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

type Result<T> = std::result::Result<T, BootError>;

/// How the vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol: long mode, %rsi = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, %ebx = hvm_start_info.
    Pvh,
}

/// Where and how the kernel starts, and what it was loaded from.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub addr: GuestAddress,
    pub protocol: BootProtocol,
    /// Guest address just past the loaded image.
    pub kernel_end: u64,
    /// The bzImage setup header, to seed the zero page.
    pub setup_header: Option<setup_header>,
}

const E820_RAM: u32 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point from a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads `kernel` (ELF vmlinux, with or without a PVH note, or bzImage).
/// A PVH entry point is preferred when the ELF carries one. The image's
/// headers are checked against `mem` first (see `kernel_check`), so no
/// size or count in them makes linux-loader work past what guest memory
/// and a few headers need.
pub fn load_kernel(mem: &GuestMem, kernel: &mut File) -> Result<KernelEntry> {
    let (format, mut image) = check_kernel(mem, kernel)?;
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        ImageFormat::Elf => {
            let r = Elf::load(mem, None, &mut image, himem).map_err(BootError::KernelLoad)?;
            let (addr, protocol) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(pvh) => (pvh, BootProtocol::Pvh),
                _ => (r.kernel_load, BootProtocol::Linux64),
            };
            Ok(KernelEntry {
                addr,
                protocol,
                kernel_end: r.kernel_end,
                setup_header: None,
            })
        }
        ImageFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut image, himem).map_err(BootError::KernelLoad)?;
            // The kernel decompresses itself in place and needs `init_size`
            // bytes there, more than the file holds.
            let init_size = r.setup_header.map(|h| u64::from(h.init_size)).unwrap_or(0);
            Ok(KernelEntry {
                addr: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                protocol: BootProtocol::Linux64,
                kernel_end: r.kernel_end.max(r.kernel_load.raw_value() + init_size),
                setup_header: r.setup_header,
            })
        }
    }
}

/// Copies the initrd to the top of low memory, page aligned, above the
/// kernel. Returns its address and size. The size is checked before any
/// of it is read, and no more than that is read if the file grows.
pub fn load_initrd(
    mem: &GuestMem,
    mem_size: u64,
    kernel_end: u64,
    initrd: &mut File,
) -> Result<(GuestAddress, u64)> {
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(BootError::InitrdRead)?;
    if size == 0 {
        return Err(BootError::InitrdEmpty);
    }
    let limit = low_memory_end(mem_size);
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(BootError::InitrdTooBig { size, limit })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooBig { size, limit })?;
    // Read through `CheckedImage`, which fills each guest memory region
    // whole: a single read() stops short of 2 GiB.
    mem.read_exact_volatile_from(
        GuestAddress(addr),
        &mut CheckedImage::new(initrd, size),
        len,
    )
    .map_err(BootError::InitrdLoad)?;
    Ok((GuestAddress(addr), size))
}

/// Checks and parses a kernel command line: printable ASCII that fits,
/// with its NUL, in Linux's `COMMAND_LINE_SIZE`.
pub fn kernel_cmdline(args: &str) -> Result<Cmdline> {
    if let Some(c) = args.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(BootError::Cmdline(format!(
            "{c:?} is not a printable ASCII character"
        )));
    }
    if args.len() >= CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline(format!(
            "{} bytes is too long; at most {} fit",
            args.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    Cmdline::try_from(args, CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))
}

/// Parses and writes the kernel command line; returns its size with NUL.
pub fn load_command_line(mem: &GuestMem, args: &str) -> Result<usize> {
    let cmdline = kernel_cmdline(args)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BootError::CmdlineLoad)?;
    let c = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(c.as_bytes_with_nul().len())
}

/// The guest's RAM as (address, size) pairs, as e820 and PVH report it.
pub fn ram_map(mem_size: u64) -> Vec<(u64, u64)> {
    let low_end = low_memory_end(mem_size);
    let mut map = vec![(0, EBDA_START), (HIMEM_START, low_end - HIMEM_START)];
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

/// Everything `configure_system` needs besides guest memory.
pub struct BootInfo<'a> {
    pub entry: &'a KernelEntry,
    pub mem_size: u64,
    pub cmdline_size: usize,
    pub initrd: Option<(GuestAddress, u64)>,
    pub num_cpus: u8,
}

/// Writes the MP table and the boot information for the entry protocol.
pub fn configure_system(mem: &GuestMem, info: &BootInfo) -> Result<()> {
    setup_mptable(mem, info.num_cpus)?;
    match info.entry.protocol {
        BootProtocol::Linux64 => write_zero_page(mem, info),
        BootProtocol::Pvh => write_pvh_start_info(mem, info),
    }
}

/// Builds the zero page for the 64-bit Linux boot protocol.
pub fn zero_page(info: &BootInfo) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = info.entry.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_size as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr.raw_value() >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = ram_map(info.mem_size);
    for (i, (addr, size)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = map.len() as u8;
    params
}

fn write_zero_page(mem: &GuestMem, info: &BootInfo) -> Result<()> {
    mem.write_obj(zero_page(info), GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

fn write_pvh_start_info(mem: &GuestMem, info: &BootInfo) -> Result<()> {
    let map = ram_map(info.mem_size);
    for (i, (addr, size)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    let modlist_addr = PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64;
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = modlist_addr;
    }
    mem.write_obj(start_info, GuestAddress(PVH_INFO_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(protocol: BootProtocol) -> KernelEntry {
        KernelEntry {
            addr: GuestAddress(HIMEM_START),
            protocol,
            kernel_end: HIMEM_START + 0x1000,
            setup_header: None,
        }
    }

    fn info(e: &KernelEntry, mem_size: u64) -> BootInfo<'_> {
        BootInfo {
            entry: e,
            mem_size,
            cmdline_size: 12,
            initrd: Some((GuestAddress(0x7f0_0000), 0x1234)),
            num_cpus: 2,
        }
    }

    #[test]
    fn e820_for_small_guest() {
        let e = entry(BootProtocol::Linux64);
        let p = zero_page(&info(&e, 128 << 20));
        assert_eq!(p.e820_entries, 2);
        let t = p.e820_table;
        assert_eq!((t[0].addr, t[0].size, t[0].r#type), (0, 0x9fc00, 1));
        assert_eq!(
            (t[1].addr, t[1].size, t[1].r#type),
            (0x10_0000, (128 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn e820_for_guest_above_the_gap() {
        let e = entry(BootProtocol::Linux64);
        let p = zero_page(&info(&e, 6 << 30));
        assert_eq!(p.e820_entries, 3);
        let t = p.e820_table;
        assert_eq!(t[1].addr + t[1].size, MMIO_GAP_START);
        assert_eq!(
            (t[2].addr, t[2].size),
            (1 << 32, (6 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn zero_page_header_fields() {
        let e = entry(BootProtocol::Linux64);
        let p = zero_page(&info(&e, 128 << 20));
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 12);
        assert_eq!({ hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
    }

    #[test]
    fn zero_page_layout_matches_the_boot_protocol() {
        // Offsets from Documentation/arch/x86/zero-page.rst, which the
        // probe guest reads directly.
        let e = entry(BootProtocol::Linux64);
        let p = zero_page(&info(&e, 128 << 20));
        let bytes = vm_memory::ByteValued::as_slice(&p);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0x1e8], 2, "e820_entries");
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(0x228), CMDLINE_START as u32, "cmd_line_ptr");
        assert_eq!(u32_at(0x218), 0x7f0_0000, "ramdisk_image");
        assert_eq!(u32_at(0x202), KERNEL_HDR_MAGIC, "header");
        assert_eq!(u32_at(0x2d0 + 20 + 8), ((128 << 20) - 0x10_0000) as u32);
    }

    #[test]
    fn pvh_start_info_written() {
        let m = crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), 128 << 20)]).unwrap();
        let e = entry(BootProtocol::Pvh);
        configure_system(&m, &info(&e, 128 << 20)).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC);
        assert_eq!(si.cmdline_paddr, CMDLINE_START);
        assert_eq!(si.memmap_entries, 2);
        assert_eq!(si.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x7f0_0000, 0x1234));
        let second: hvm_memmap_table_entry =
            m.read_obj(GuestAddress(si.memmap_paddr + 24)).unwrap();
        assert_eq!(second.addr, HIMEM_START);
    }

    #[test]
    fn command_line_is_written_with_nul() {
        let m = crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let n = load_command_line(&m, "console=ttyS0 probe=e820").unwrap();
        assert_eq!(n, 25);
        let mut buf = [0u8; 25];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 probe=e820\0");
        assert!(load_command_line(&m, &"x".repeat(CMDLINE_MAX_SIZE)).is_err());
    }

    /// An initrd file of `bytes`, then a hole to `len`; removed when dropped.
    struct Initrd(std::path::PathBuf);

    impl Initrd {
        fn new(name: &str, bytes: &[u8], len: u64) -> Initrd {
            let path =
                std::env::temp_dir().join(format!("husk-initrd-{}-{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            let f = File::options().write(true).open(&path).unwrap();
            f.set_len(len.max(bytes.len() as u64)).unwrap();
            Initrd(path)
        }

        fn load(&self, mem_size: u64, kernel_end: u64) -> Result<(GuestAddress, u64)> {
            let m = crate::vmm::kvm::memory::anonymous(&[(GuestAddress(0), mem_size as usize)])
                .unwrap();
            load_initrd(&m, mem_size, kernel_end, &mut File::open(&self.0).unwrap())
        }
    }

    impl Drop for Initrd {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn initrd_size_is_checked_before_it_is_read() {
        let mem = 128 << 20;
        let r = Initrd::new("ok", b"initrd", 0x1800).load(mem, 0x20_0000);
        assert_eq!(r.unwrap(), (GuestAddress(mem - 0x2000), 0x1800));
        let r = Initrd::new("empty", b"", 0).load(mem, 0x20_0000);
        assert!(matches!(r, Err(BootError::InitrdEmpty)), "{r:?}");
        // Bigger than guest memory: refused without reading 4 GiB.
        let r = Initrd::new("huge", b"initrd", 4 << 30).load(mem, 0x20_0000);
        assert!(
            matches!(r, Err(BootError::InitrdTooBig { size: 0x1_0000_0000, limit }) if limit == mem),
            "{r:?}"
        );
        // Fits in memory, but not above the kernel.
        let r = Initrd::new("over-kernel", b"initrd", 64 << 20).load(mem, 65 << 20);
        assert!(matches!(r, Err(BootError::InitrdTooBig { .. })), "{r:?}");
    }
}
