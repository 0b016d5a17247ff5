//! Builds the probe guest (tests/guest/) into a freestanding ELF that the
//! `husk` binary embeds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let guest = PathBuf::from("tests/guest");
    let sources = ["start.S", "probe.c", "probe.ld"];
    for s in sources {
        println!("cargo:rerun-if-changed={}", guest.join(s).display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let elf = out.join("probe.elf");
    let status = Command::new(&cc)
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            // Emulated guests cannot run SSE, so keep to general registers.
            "-mgeneral-regs-only",
            "-mno-red-zone",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fcf-protection=none",
            "-fno-tree-loop-distribute-patterns",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,-n",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", guest.join("probe.ld").display()))
        .arg("-o")
        .arg(&elf)
        .arg(guest.join("start.S"))
        .arg(guest.join("probe.c"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the probe guest: {e}"));
    assert!(status.success(), "building the probe guest failed");
}
