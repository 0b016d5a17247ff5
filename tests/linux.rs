//! Boots a real Linux kernel named by HUSK_TEST_KERNEL. Skipped, visibly,
//! where there is none or where the host cannot run it.

mod common;

use common::{kvm_available, skip, Vmm};
use serde_json::json;

#[test]
fn linux_kernel_boots_to_its_banner() {
    let Ok(kernel) = std::env::var("HUSK_TEST_KERNEL") else {
        return skip("HUSK_TEST_KERNEL is not set");
    };
    if !kvm_available() {
        return;
    }
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if pvm && std::env::var_os("HUSK_TEST_KERNEL_IS_PVM").is_none() {
        return skip(
            "this host virtualizes with PVM and only PVM-enabled kernels boot here; \
             set HUSK_TEST_KERNEL_IS_PVM=1 if HUSK_TEST_KERNEL is one",
        );
    }
    let mut vmm = Vmm::with_api();
    vmm.put_ok(
        "/boot-source",
        json!({
            "kernel_image_path": kernel,
            // No root filesystem: the kernel panics after init and reboots.
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off nomodule",
        }),
    );
    vmm.put_ok(
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 256}),
    );
    vmm.start();
    vmm.expect_containing("Linux version");
    // Without a root filesystem the kernel panics and, with panic=1,
    // reboots through the i8042: the VMM then exits cleanly.
    vmm.expect_containing("Kernel panic");
    assert_eq!(vmm.wait().code(), Some(0));
}
