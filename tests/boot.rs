//! Boots the probe guest on the real /dev/kvm and checks what it reports
//! on the serial port.

mod common;

use common::{kvm_available, Vmm};
use serde_json::json;

#[test]
fn api_boot_reports_cmdline_and_e820_exactly() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let args = "console=ttyS0 reboot=k probe=cmdline,e820";
    vmm.configure(args, 1, 256);
    vmm.start();
    assert_eq!(vmm.expect_line("PROBE BOOT"), "PROBE BOOT");
    assert_eq!(
        vmm.expect_line("PROBE cmdline"),
        format!("PROBE cmdline OK {args}")
    );
    assert_eq!(
        vmm.expect_line("PROBE e820"),
        "PROBE e820 OK 0x0:0x9fc00:1 0x100000:0xff00000:1"
    );
    vmm.expect_line("PROBE DONE");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn config_file_boot_needs_no_api() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=count:3,cmdline"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": false},
        })
    });
    for i in 1..=3 {
        assert_eq!(vmm.expect_line("COUNT"), format!("COUNT {i}"));
    }
    assert_eq!(vmm.expect_line("PROBE count:3"), "PROBE count:3 OK");
    assert_eq!(
        vmm.expect_line("PROBE cmdline"),
        "PROBE cmdline OK probe=count:3,cmdline"
    );
    vmm.expect_line("PROBE DONE");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn mp_table_lists_every_vcpu() {
    if !kvm_available() {
        return;
    }
    for vcpus in [1u8, 4] {
        let mut vmm = Vmm::with_api();
        vmm.configure("probe=cpus", vcpus, 128);
        vmm.start();
        assert_eq!(
            vmm.expect_line("PROBE cpus"),
            format!("PROBE cpus OK {vcpus}")
        );
        vmm.expect_line("PROBE DONE");
        assert_eq!(vmm.wait().code(), Some(0));
    }
}

#[test]
fn memory_above_the_mmio_gap_is_a_second_region() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=e820", 1, 4096);
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE e820"),
        "PROBE e820 OK 0x0:0x9fc00:1 0x100000:0xbff00000:1 0x100000000:0x40000000:1"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn serial_input_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=serial,serial", 1, 128);
    // Typed before the guest boots: it must wait in the buffer.
    vmm.write_stdin(b"hello from the host\n");
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE serial"),
        "PROBE serial OK hello from the host"
    );
    // Longer than the UART's 64-byte FIFO, typed while the guest polls.
    let long = "x".repeat(100);
    vmm.write_stdin(format!("{long}\n").as_bytes());
    assert_eq!(
        vmm.expect_line("PROBE serial"),
        format!("PROBE serial OK {long}")
    );
    vmm.expect_line("PROBE DONE");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn ctrl_alt_del_reaches_a_waiting_guest() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    vmm.configure("probe=cmdline,wait-cad,count:1", 1, 128);
    vmm.start();
    vmm.expect_line("PROBE cmdline");
    // The guest is now polling the keyboard controller.
    assert!(vmm.is_running());
    let r = vmm.action("SendCtrlAltDel");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(vmm.expect_line("PROBE wait-cad"), "PROBE wait-cad OK");
    vmm.expect_line("PROBE count:1 OK");
    vmm.expect_line("PROBE DONE");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn initrd_is_loaded_and_announced() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_api();
    let initrd = vmm.dir.path("initrd.img");
    let mut content = b"HUSK-INITRD-0001".to_vec();
    content.resize(10_000, 0xaa);
    std::fs::write(&initrd, &content).unwrap();
    let boot = json!({"kernel_image_path": vmm.kernel, "initrd_path": initrd, "boot_args": "probe=initrd"});
    vmm.put_ok("/boot-source", boot);
    vmm.start();
    let line = vmm.expect_line("PROBE initrd");
    assert!(line.starts_with("PROBE initrd OK addr=0x"), "{line}");
    assert!(
        line.ends_with(" size=10000 head=HUSK-INITRD-0001"),
        "{line}"
    );
    // Page aligned, below the end of a 128 MiB guest.
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr=0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .unwrap();
    assert_eq!(addr % 4096, 0);
    assert!(addr + 10_000 <= 128 << 20);
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn triple_fault_is_a_distinct_exit_status() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_config(
        |kernel| json!({"boot-source": {"kernel_image_path": kernel, "boot_args": "probe=triple-fault"}}),
    );
    vmm.expect_line("PROBE triple-fault RAISING");
    assert_eq!(vmm.wait().code(), Some(3));
}

#[test]
fn unknown_checks_fail_visibly() {
    if !kvm_available() {
        return;
    }
    let mut vmm = Vmm::with_config(
        |kernel| json!({"boot-source": {"kernel_image_path": kernel, "boot_args": "probe=nonsense,count:x"}}),
    );
    assert_eq!(
        vmm.expect_line("PROBE nonsense"),
        "PROBE nonsense FAIL unknown check"
    );
    assert_eq!(
        vmm.expect_line("PROBE count:x"),
        "PROBE count:x FAIL usage: count:N"
    );
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn serial_output_can_go_to_a_file() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let out = vmm.dir.path("serial.log");
    vmm.configure("probe=count:2", 1, 128);
    vmm.put_ok("/serial", json!({ "serial_out_path": out }));
    vmm.start();
    let mut vmm = vmm;
    assert_eq!(vmm.wait().code(), Some(0));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text,
        "PROBE BOOT\nCOUNT 1\nCOUNT 2\nPROBE count:2 OK\nPROBE DONE\n"
    );
}

/// Boots the probe written as `format` with an initrd, and checks it was
/// entered through `protocol` and found its memory map, command line and
/// initrd.
fn boot_as(format: husk::probe::ProbeFormat, protocol: &str) {
    let mut vmm = Vmm::with_api();
    let kernel = vmm.dir.path("kernel");
    husk::probe::write_probe_as(&kernel, format).unwrap();
    let initrd = vmm.dir.path("initrd");
    std::fs::write(&initrd, b"initrd-contents!").unwrap();
    let args = "probe=boot,e820,cmdline,initrd,cpus";
    vmm.put_ok(
        "/boot-source",
        json!({"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": args}),
    );
    vmm.put_ok(
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 128}),
    );
    vmm.start();
    assert_eq!(
        vmm.expect_line("PROBE boot"),
        format!("PROBE boot OK {protocol}")
    );
    assert_eq!(
        vmm.expect_line("PROBE e820"),
        "PROBE e820 OK 0x0:0x9fc00:1 0x100000:0x7f00000:1"
    );
    assert_eq!(
        vmm.expect_line("PROBE cmdline"),
        format!("PROBE cmdline OK {args}")
    );
    let line = vmm.expect_line("PROBE initrd");
    assert!(line.ends_with(" size=16 head=initrd-contents!"), "{line}");
    assert_eq!(vmm.expect_line("PROBE cpus"), "PROBE cpus OK 2");
    vmm.expect_line("PROBE DONE");
    assert_eq!(vmm.wait().code(), Some(0));
}

#[test]
fn vmlinux_boots_through_the_64bit_protocol() {
    if !kvm_available() {
        return;
    }
    boot_as(husk::probe::ProbeFormat::Linux64, "linux64");
}

#[test]
fn pvh_note_selects_the_pvh_entry() {
    if !kvm_available() {
        return;
    }
    boot_as(husk::probe::ProbeFormat::Pvh, "pvh");
}

#[test]
fn bzimage_boots_at_its_64bit_entry() {
    if !kvm_available() {
        return;
    }
    boot_as(husk::probe::ProbeFormat::Bzimage, "linux64");
}

#[test]
fn the_lean_husk_vmm_binary_boots_the_same_way() {
    if !kvm_available() {
        return;
    }
    let dir = common::TempDir::new();
    let kernel = common::probe_kernel(&dir);
    let cfg = dir.path("vm.json");
    std::fs::write(
        &cfg,
        json!({"boot-source": {"kernel_image_path": kernel, "boot_args": "probe=cpus"},
               "machine-config": {"vcpu_count": 3, "mem_size_mib": 128}})
        .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "PROBE BOOT\nPROBE cpus OK 3\nPROBE DONE\n");
}

#[test]
fn cpuid_shows_the_configured_topology() {
    if !kvm_available() {
        return;
    }
    for (smt, per_core) in [(false, 1), (true, 2)] {
        let mut vmm = Vmm::with_api();
        vmm.put_ok(
            "/boot-source",
            json!({"kernel_image_path": vmm.kernel, "boot_args": "probe=cpuid"}),
        );
        vmm.put_ok(
            "/machine-config",
            json!({"vcpu_count": 4, "mem_size_mib": 128, "smt": smt}),
        );
        vmm.start();
        assert_eq!(
            vmm.expect_line("PROBE cpuid"),
            format!(
                "PROBE cpuid OK apic=0 logical=4 hypervisor=1 signature=KVMKVMKVM \
                 threads_per_core={per_core} threads_per_package=4"
            )
        );
        assert_eq!(vmm.wait().code(), Some(0));
    }
}

#[test]
fn the_serial_rate_limiter_drops_what_is_over_its_budget() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    let out = vmm.dir.path("serial.log");
    let metrics = vmm.dir.path("metrics.json");
    // A bucket that never refills within the run: 20 bytes in all.
    let limited = json!({
        "serial_out_path": out,
        "rate_limiter": {"size": 20, "refill_time": 1_000_000},
    });
    let msg = Vmm::fault(&vmm.put(
        "/serial",
        json!({"serial_out_path": out, "rate_limiter": {"size": 20, "refill_time": 0}}),
    ));
    assert!(msg.contains("refill_time"), "{msg}");
    vmm.put_ok("/serial", limited.clone());
    assert_eq!(vmm.get("/vm/config").json()["serial"], limited);
    vmm.put_ok("/metrics", json!({ "metrics_path": metrics }));
    vmm.configure("probe=count:2", 1, 128);
    vmm.start();
    let mut vmm = vmm;
    assert_eq!(vmm.wait().code(), Some(0));
    // The console, cut at the budget; the rest was dropped and counted.
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text, "PROBE BOOT\nCOUNT 1\nC");
    let full = "PROBE BOOT\nCOUNT 1\nCOUNT 2\nPROBE count:2 OK\nPROBE DONE\n";
    let last = std::fs::read_to_string(&metrics).unwrap();
    let m: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(
        m["serial"]["rate_limiter_dropped_bytes"],
        (full.len() - text.len()) as u64,
        "{m}"
    );
}
