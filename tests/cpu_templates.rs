//! CPU templates on real KVM with the probe guest: custom templates
//! (`PUT /cpu-config`, the config file's `cpu-config`) and the static
//! `cpu_template` values change what CPUID and the MSRs tell the guest;
//! bad templates are refused; a snapshot keeps the templated CPUID.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{kvm_available, skip, TempDir, Vmm};
use serde_json::{json, Value};

/// The low bit of the stepping (leaf 1 EAX): nothing reads it. (Feature
/// flags would do as well where KVM shows the guest its CPUID table as
/// set; on PVM hosts some, such as leaf 1 ECX and leaf 7, show the
/// host's own bits whatever the table says.)
const STEPPING_0: u64 = 1 << 0;
/// A reserved bit of leaf 1 EDX, never set by a real CPU.
const EDX_RESERVED_10: u64 = 1 << 10;
/// IA32_SYSENTER_CS: husk starts it at 0, and the probe can read it.
const SYSENTER_CS: u32 = 0x174;

/// The registers a `PROBE cpuid-regs OK ...` line shows.
fn regs_of(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((
                k.into(),
                u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()?,
            ))
        })
        .collect()
}

/// Boots the probe with `setup` applied before start; returns the
/// cpuid-regs registers and the serial line of `msr:` when asked.
fn boot(setup: impl FnOnce(&Vmm), checks: &str) -> (Vmm, HashMap<String, u64>) {
    let mut vmm = Vmm::with_api();
    vmm.configure(&format!("probe={checks}"), 1, 128);
    setup(&vmm);
    vmm.start();
    let line = vmm.expect_line("PROBE cpuid-regs");
    assert!(line.starts_with("PROBE cpuid-regs OK"), "{line}");
    (vmm, regs_of(&line))
}

/// A template that flips the stepping's low bit from `host_eax`'s,
/// sets a reserved bit of leaf 1 EDX when `set_reserved`, and starts
/// IA32_SYSENTER_CS at 0xaa.
fn custom_template(host_eax: u64, set_reserved: bool) -> Value {
    let stepping = if host_eax & STEPPING_0 == 0 {
        "0b1"
    } else {
        "0b0"
    };
    let mut modifiers = vec![json!({"register": "eax", "bitmap": stepping})];
    if set_reserved {
        modifiers.push(json!({"register": "edx", "bitmap": "0b1_xxxx_xxxx_xx"}));
    }
    json!({
        "cpuid_modifiers": [{
            "leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": modifiers
        }],
        "msr_modifiers": [{"addr": "0x174", "bitmap": "0b1010_1010"}]
    })
}

fn vendor() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default()
}

#[test]
fn a_custom_template_forces_cpuid_bits_and_msr_values() {
    if !kvm_available() {
        return;
    }
    let (_plain, host) = boot(|_| {}, "cpuid-regs");
    let eax = host["1.0.eax"];
    assert_eq!(host["1.0.edx"] & EDX_RESERVED_10, 0, "{host:?}");

    let msr = format!("cpuid-regs,msr:{SYSENTER_CS}");
    let template = custom_template(eax, true);
    let (mut vmm, guest) = boot(|v| v.put_ok("/cpu-config", template.clone()), &msr);
    assert_eq!(
        guest["1.0.eax"],
        eax ^ STEPPING_0,
        "one bit forced, the rest kept"
    );
    assert_eq!(guest["1.0.edx"], host["1.0.edx"] | EDX_RESERVED_10);
    assert_eq!(guest["7.0.ebx"], host["7.0.ebx"], "other leaves untouched");
    let line = vmm.expect_line("PROBE msr:");
    assert_eq!(line, format!("PROBE msr:{SYSENTER_CS} OK value=0xaa"));

    // The same template from a config file.
    let mut vmm = Vmm::with_config(|kernel| {
        json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "probe=cpuid-regs"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "cpu-config": template,
        })
    });
    let regs = regs_of(&vmm.expect_line("PROBE cpuid-regs OK"));
    assert_eq!(regs["1.0.eax"], eax ^ STEPPING_0);
}

#[test]
fn a_static_template_masks_what_it_documents() {
    if !kvm_available() {
        return;
    }
    let vendor = vendor();
    let (_plain, host) = boot(|_| {}, "cpuid-regs");
    let (template, wrong) = match vendor.as_str() {
        "AuthenticAMD" => ("T2A", "T2"),
        "GenuineIntel" => ("T2", "T2A"),
        other => {
            skip(&format!("no static CPU template for CPU vendor {other:?}"));
            return;
        }
    };
    let (_vmm, regs) = boot(
        |v| {
            let r = v.patch("/machine-config", json!({"cpu_template": template}));
            assert_eq!(r.status, 204, "{}", r.body);
            assert_eq!(v.get("/machine-config").json()["cpu_template"], template);
        },
        "cpuid-regs",
    );
    // Every T2 template: the signature of family 6 model 0x3f stepping
    // 2, PREFETCHW, MONITORX, 1 GiB pages and WBNOINVD off, the rest of
    // those registers kept.
    assert_eq!(regs["1.0.eax"] & 0x0fff_3fff, 0x0003_06f2, "{regs:?}");
    let kept = |reg: &str, mask: u64| {
        assert_eq!(regs[reg] & !mask, host[reg] & !mask, "{reg}: {regs:?}");
    };
    let ext_ecx = if template == "T2A" {
        0x2000_01c0
    } else {
        0x2000_0100
    };
    let ext_edx = if template == "T2A" {
        0x07c0_0000
    } else {
        0x0400_0000
    };
    assert_eq!(regs["80000001.0.ecx"] & ext_ecx, 0, "{regs:?}");
    kept("80000001.0.ecx", ext_ecx);
    assert_eq!(regs["80000001.0.edx"] & ext_edx, 0, "{regs:?}");
    kept("80000001.0.edx", ext_edx);
    if template == "T2A" {
        // CLZERO, RstrFpErrPtrs and WBNOINVD off; IBRS preferred and
        // same-mode on.
        assert_eq!(
            regs["80000008.0.ebx"] & 0x000c_0205,
            0x000c_0000,
            "{regs:?}"
        );
    } else {
        assert_eq!(regs["80000008.0.ebx"] & 0x200, 0, "{regs:?}");
    }

    // The other vendor's template is refused at start, naming why.
    let vmm = Vmm::with_api();
    vmm.configure("probe=cpuid-regs", 1, 128);
    let r = vmm.patch("/machine-config", json!({"cpu_template": wrong}));
    assert_eq!(r.status, 204, "{}", r.body);
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(
        msg.contains(&format!("CPU template {wrong} is for")),
        "{msg}"
    );
    assert!(msg.contains(&vendor), "{msg}");
}

#[test]
fn bad_templates_are_refused_and_the_last_one_set_wins() {
    if !kvm_available() {
        return;
    }
    let vmm = Vmm::with_api();
    vmm.configure("probe=cpuid-regs", 1, 128);
    let leaf = |modifier: Value| {
        json!({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                    "modifiers": [modifier]}]})
    };
    let long = format!("0b{}", "1".repeat(33));
    let cases = [
        (
            leaf(json!({"register": "esi", "bitmap": "0b1"})),
            "unknown CPUID register",
        ),
        (
            leaf(json!({"register": "eax", "bitmap": long})),
            "more than 32 bits",
        ),
        (
            leaf(json!({"register": "eax", "bitmap": "0b10y1"})),
            "is not 0, 1, x or _",
        ),
        (
            json!({"msr_modifiers": [{"addr": "0x174", "bitmap": format!("0b{}", "x".repeat(65))}]}),
            "more than 64 bits",
        ),
        (
            json!({"cpuid_modifiers": [{"leaf": "1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}),
            "0x (hexadecimal) or 0b (binary) prefix",
        ),
        (
            json!({"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}),
            "aarch64",
        ),
        (json!({"kvm_capabilities": ["x"]}), "capability number"),
        (json!({"cpuid": []}), "unknown field"),
    ];
    for (body, want) in cases {
        let msg = Vmm::fault(&vmm.put("/cpu-config", body.clone()));
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let msg = Vmm::fault(&vmm.patch("/machine-config", json!({"cpu_template": "T3"})));
    assert!(
        msg.contains("\"None\", \"C3\", \"T2\", \"T2S\", \"T2CL\", \"T2A\""),
        "{msg}"
    );

    // A static template, then a custom one: the custom one is applied.
    let r = vmm.patch("/machine-config", json!({"cpu_template": "C3"}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(vmm.get("/machine-config").json()["cpu_template"], "C3");
    vmm.put_ok("/cpu-config", custom_template(0, true));
    assert!(vmm
        .get("/machine-config")
        .json()
        .get("cpu_template")
        .is_none());
    let cfg = vmm.get("/vm/config").json();
    assert_eq!(
        cfg["cpu-config"]["msr_modifiers"][0]["addr"], "0x174",
        "{cfg}"
    );
    // A modifier for a leaf KVM does not offer is refused at start.
    let mut unknown = leaf(json!({"register": "eax", "bitmap": "0b1"}));
    unknown["cpuid_modifiers"][0]["leaf"] = json!("0x7fffffff");
    vmm.put_ok("/cpu-config", unknown);
    let msg = Vmm::fault(&vmm.action("InstanceStart"));
    assert!(msg.contains("leaf 0x7fffffff"), "{msg}");
    vmm.put_ok("/cpu-config", custom_template(0, true));
    vmm.start();
    let msg = Vmm::fault(&vmm.put("/cpu-config", custom_template(0, true)));
    assert!(msg.contains("after starting"), "{msg}");
}

#[test]
fn a_snapshot_keeps_the_templated_cpuid() {
    if !kvm_available() {
        return;
    }
    let (_plain, host) = boot(|_| {}, "cpuid-regs");
    let eax = host["1.0.eax"];
    let dir = TempDir::new();
    let (state, mem) = (dir.path("vm.snap"), dir.path("vm.mem"));
    let mut a = Vmm::with_api();
    a.configure("probe=wait-cad,cpuid-regs", 1, 128);
    // Only a bit no restore check compares: a snapshot whose CPUID claims
    // a feature this host lacks (the reserved bit) is refused.
    a.put_ok("/cpu-config", custom_template(eax, false));
    a.start();
    a.expect_line("PROBE BOOT");
    let r = a.patch("/vm", json!({"state": "Paused"}));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = a.put(
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    drop(a);

    let b = Vmm::with_api();
    // A restored VMM takes its template from the snapshot only.
    let r = b.put("/cpu-config", custom_template(eax, false));
    assert_eq!(r.status, 204, "{}", r.body);
    let msg = Vmm::fault(&b.put("/snapshot/load", load_body(&state, &mem)));
    assert!(msg.contains("cpu-config"), "{msg}");

    let mut b = Vmm::with_api();
    let r = b.put("/snapshot/load", load_body(&state, &mem));
    assert_eq!(r.status, 204, "{}", r.body);
    let cfg = b.get("/vm/config").json();
    assert_eq!(
        cfg["cpu-config"]["msr_modifiers"][0]["addr"], "0x174",
        "{cfg}"
    );
    assert_eq!(b.action("SendCtrlAltDel").status, 204);
    let regs = regs_of(&b.expect_line("PROBE cpuid-regs OK"));
    assert_eq!(regs["1.0.eax"], eax ^ STEPPING_0, "{regs:?}");
    b.drain(Duration::from_millis(50));
}

fn load_body(state: &std::path::Path, mem: &std::path::Path) -> Value {
    json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    })
}
