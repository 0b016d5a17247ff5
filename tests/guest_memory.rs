//! Guest memory options on real KVM with the probe guest, as Firecracker
//! has them: `huge_pages` "2M" (hugetlbfs pages reserved at start, a clear
//! 400 when the host's pool is too small, snapshots restored through a
//! page server) and "Transparent" (madvise), any `mem_size_mib` but 0 at
//! configuration with what does not fit refused at InstanceStart.
//!
//! Tests that size the host's huge page pool hold a machine-wide lock
//! while they do (`common::hugepages`), and put the pool back after.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hugepages::{guest_memory_vmas, Counts, Pool};
use common::{assert_pages_served, kvm_available, page_server_bin, wait_page_server, TempDir, Vmm};
use husk::vmm::client::Response;
use serde_json::json;

const MEM_MIB: u64 = 128;
/// Pages `dirty:N` writes, from 64 MiB up: 16 MiB of guest memory.
const TOUCHED: &str = "dirty:4096";

fn machine(vmm: &Vmm, mem_mib: u64, huge_pages: &str) -> Response {
    vmm.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": mem_mib, "huge_pages": huge_pages}),
    )
}

fn boot_source(vmm: &Vmm, boot_args: &str) {
    vmm.put_ok(
        "/boot-source",
        json!({"kernel_image_path": vmm.kernel, "boot_args": boot_args}),
    );
}

/// The VMM answers, and has not started.
fn assert_still_serving(vmm: &Vmm) {
    let r = vmm.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "Not started", "{}", r.body);
}

/// Ends a guest waiting in `wait-cad` and checks the VMM exits cleanly.
fn finish(vmm: &mut Vmm) {
    assert_eq!(vmm.action("SendCtrlAltDel").status, 204);
    vmm.expect_line("PROBE wait-cad OK");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn huge_pages_2m_back_guest_memory_with_reserved_hugetlb_pages() {
    if !kvm_available() {
        return;
    }
    let need = MEM_MIB / 2;
    let Some(_pool) = Pool::with_available(need + 8) else {
        return;
    };
    let mut vmm = Vmm::with_api();
    boot_source(&vmm, &format!("probe=e820,{TOUCHED},wait-cad"));
    assert_eq!(machine(&vmm, MEM_MIB, "2M").status, 204);
    assert_eq!(vmm.get("/machine-config").json()["huge_pages"], "2M");
    let before = Counts::read();
    vmm.start();
    vmm.expect_line("PROBE e820 OK");
    let line = vmm.expect_line("PROBE dirty:4096 ");
    assert!(line.starts_with("PROBE dirty:4096 OK pages=4096"), "{line}");

    // The whole of guest memory was reserved from the pool at start:
    // exactly mem/2 pages are no longer available to anyone else.
    let after = Counts::read();
    assert_eq!(
        after.available(),
        before.available() - need,
        "{before:?} {after:?}"
    );
    // The guest memory mapping is hugetlbfs, its touched pages huge ones.
    let vmas = guest_memory_vmas(vmm.pid(), MEM_MIB);
    assert_eq!(vmas.len(), 1, "{vmas:?}");
    let vma = &vmas[0];
    assert_eq!(vma.num("KernelPageSize"), 2048, "{vma:?}");
    assert!(vma.header.contains("anon_hugepage"), "{vma:?}");
    assert!(vma.num("Private_Hugetlb") >= 16 << 10, "{vma:?}");
    assert_eq!(vma.num("Rss"), 0, "hugetlb pages are not in Rss: {vma:?}");
    common::assert_filtered(vmm.pid());
    let cfg = vmm.get("/vm/config").json();
    assert_eq!(cfg["machine-config"]["huge_pages"], "2M", "{cfg}");
    finish(&mut vmm);
}

#[test]
fn too_few_huge_pages_fail_instance_start_with_the_figures() {
    if !kvm_available() {
        return;
    }
    let need = MEM_MIB / 2;
    let Some(_pool) = Pool::with_available(need / 2) else {
        return;
    };
    let mut vmm = Vmm::with_api();
    boot_source(&vmm, "probe=e820");
    assert_eq!(machine(&vmm, MEM_MIB, "2M").status, 204);
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = Vmm::fault(&r);
    assert!(
        msg.contains(&format!("needs {need} free 2 MiB huge pages"))
            && msg.contains(&format!("the host has {}", need / 2))
            && msg.contains("/proc/sys/vm/nr_hugepages"),
        "{msg}"
    );
    // Nothing was held back, and the VMM still serves and can start
    // once the machine fits.
    assert_eq!(Counts::read().available(), need / 2);
    assert_still_serving(&vmm);
    assert_eq!(machine(&vmm, need, "2M").status, 204);
    vmm.start();
    vmm.expect_line("PROBE e820 OK");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn transparent_huge_pages_back_the_memory_the_guest_touches() {
    if !kvm_available() {
        return;
    }
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        common::skip(&format!(
            "transparent huge pages are off on this host: {thp:?}"
        ));
        return;
    }
    let mut vmm = Vmm::with_api();
    boot_source(&vmm, &format!("probe={TOUCHED},wait-cad"));
    assert_eq!(machine(&vmm, MEM_MIB, "Transparent").status, 204);
    assert_eq!(
        vmm.get("/machine-config").json()["huge_pages"],
        "Transparent"
    );
    vmm.start();
    // Then it waits in wait-cad.
    vmm.expect_line("PROBE dirty:4096 OK");
    let vmas = guest_memory_vmas(vmm.pid(), MEM_MIB);
    assert_eq!(vmas.len(), 1, "{vmas:?}");
    let vma = &vmas[0];
    assert_eq!(vma.num("THPeligible"), 1, "{vma:?}");
    // The 16 MiB the guest wrote, in 2 MiB pages (the host may split or
    // fail to find some: at least half).
    let anon_huge = vma.num("AnonHugePages");
    assert!(anon_huge >= 8 << 10, "{vma:?}");
    assert_eq!(anon_huge % 2048, 0, "{vma:?}");
    finish(&mut vmm);
}

#[test]
fn without_huge_pages_guest_memory_is_4k_and_not_thp_eligible() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    boot_source(&vmm, &format!("probe={TOUCHED},wait-cad"));
    assert_eq!(machine(&vmm, MEM_MIB, "None").status, 204);
    assert_eq!(vmm.get("/machine-config").json()["huge_pages"], "None");
    vmm.start();
    // Then it waits in wait-cad.
    vmm.expect_line("PROBE dirty:4096 OK");
    let vmas = guest_memory_vmas(vmm.pid(), MEM_MIB);
    let vma = &vmas[0];
    assert_eq!(vma.num("KernelPageSize"), 4, "{vma:?}");
    assert_eq!(vma.num("AnonHugePages"), 0, "{vma:?}");
    assert!(vma.num("Rss") >= 16 << 10, "{vma:?}");
    finish(&mut vmm);
}

/// Starts the example page server on `sock` for `mem`.
fn page_server(sock: &Path, mem: &Path) -> std::process::Child {
    let server = Command::new(page_server_bin())
        .arg(sock)
        .arg(mem)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_page_server(sock, Duration::from_secs(10));
    server
}

#[test]
fn a_2m_snapshot_restores_through_a_page_server_and_keeps_its_huge_pages() {
    if !kvm_available() {
        return;
    }
    let need = MEM_MIB / 2;
    // The snapshotted VM and the restored one may overlap for a moment.
    let Some(_pool) = Pool::with_available(2 * need) else {
        return;
    };
    let dir = TempDir::new();
    let mut a = Vmm::with_api();
    boot_source(&a, &format!("probe={TOUCHED},count:100000000"));
    assert_eq!(machine(&a, MEM_MIB, "2M").status, 204);
    a.start();
    a.expect_line("COUNT 100");
    assert_eq!(a.patch("/vm", json!({"state": "Paused"})).status, 204);
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    a.drain(Duration::from_millis(300));
    let last: u64 = a
        .seen
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("COUNT ")?.parse().ok())
        .unwrap();
    drop(a);
    // What the guest wrote is in the memory file.
    let bytes = std::fs::read(&mem).unwrap();
    assert_eq!(bytes.len() as u64, MEM_MIB << 20);
    let page = 4096;
    let first = (64 << 20) / page;
    assert_eq!(bytes[first * page], (first as u8) | 1);

    let mut b = Vmm::with_api();
    // As in Firecracker, the file backend cannot restore hugetlbfs memory.
    let r = b.put(
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(Vmm::fault(&r).contains("Uffd"), "{}", r.body);
    assert_still_serving(&b);

    let sock = dir.path("uffd.sock");
    let mut server = page_server(&sock, &mem);
    let started = Instant::now();
    let r = b.put(
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "Uffd", "backend_path": sock},
            "resume_vm": true,
        }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let next = b.expect_line("COUNT ");
    eprintln!(
        "2M restore through the page server: {:?} to the first count",
        started.elapsed()
    );
    let n: u64 = next.strip_prefix("COUNT ").unwrap().parse().unwrap();
    assert!(n == last + 1 || n == last + 2, "{next} after COUNT {last}");
    assert_eq!(b.get("/machine-config").json()["huge_pages"], "2M");
    let vmas = guest_memory_vmas(b.pid(), MEM_MIB);
    assert_eq!(vmas.len(), 1, "{vmas:?}");
    assert_eq!(vmas[0].num("KernelPageSize"), 2048, "{vmas:?}");
    assert!(vmas[0].num("Private_Hugetlb") > 0, "{vmas:?}");
    common::assert_filtered(b.pid());
    drop(b);
    assert_pages_served(&mut server);
}

#[test]
fn any_size_but_0_is_configured_and_what_cannot_hold_the_kernel_fails_the_start() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    boot_source(&vmm, "probe=e820");
    assert_eq!(machine(&vmm, 0, "None").status, 400);
    // 1 MiB holds the boot structures but not the kernel, loaded at 1 MiB.
    assert_eq!(machine(&vmm, 1, "None").status, 204);
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = Vmm::fault(&r);
    assert!(
        msg.contains("not inside guest memory, which ends at 0x100000"),
        "{msg}"
    );
    assert_still_serving(&vmm);
    // 2 MiB is the smallest the probe guest (1 MiB + its image) needs.
    assert_eq!(machine(&vmm, 2, "None").status, 204);
    vmm.start();
    let line = vmm.expect_line("PROBE e820 OK");
    assert_eq!(
        line, "PROBE e820 OK 0x0:0x9fc00:1 0x100000:0x100000:1",
        "{line}"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn a_huge_mem_size_is_configured_and_refused_at_instance_start() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    boot_source(&vmm, "probe=e820");
    let huge = 64u64 << 20; // 64 TiB, in MiB
    assert_eq!(machine(&vmm, huge, "None").status, 204);
    assert_eq!(vmm.get("/machine-config").json()["mem_size_mib"], huge);
    // Refused before anything is mapped or allocated (not even the dirty
    // bitmap, 2 GiB for 64 TiB): no KVM memory slot holds that much.
    let r = vmm.put(
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": huge, "track_dirty_pages": true}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vmm.action("InstanceStart");
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = Vmm::fault(&r);
    assert!(
        msg.contains("more than the 8388607 MiB a KVM memory slot can hold"),
        "{msg}"
    );
    let rss_kib: u64 = common::status_field(vmm.pid() as i32, "VmHWM")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(rss_kib < 256 << 10, "peak RSS {rss_kib} kB");
    assert_still_serving(&vmm);
    // Nothing of the attempt stays: the same VMM starts a machine that fits.
    assert_eq!(machine(&vmm, MEM_MIB, "None").status, 204);
    vmm.start();
    vmm.expect_line("PROBE e820 OK");
    assert_eq!(vmm.wait().code(), Some(0));
}
