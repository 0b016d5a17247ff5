//! Builds the probe guest (tests/guest/) into two freestanding ELFs that
//! the `husk` binary embeds: one entered through the 64-bit Linux boot
//! protocol, one that carries the PVH note.

use std::path::{Path, PathBuf};
use std::process::Command;

const CFLAGS: &[&str] = &[
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
];

fn build(cc: &str, guest: &Path, out: &Path, sources: &[&str]) {
    let status = Command::new(cc)
        .args(CFLAGS)
        .arg(format!("-Wl,-T,{}", guest.join("probe.ld").display()))
        .arg("-o")
        .arg(out)
        .args(sources.iter().map(|s| guest.join(s)))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the probe guest: {e}"));
    assert!(status.success(), "building {} failed", out.display());
}

/// The probe guest's sources, linked into both builds (start.S first: it
/// holds the entry points at fixed offsets).
const SOURCES: &[&str] = &[
    "start.S",
    "probe.c",
    "virtio.c",
    "rng.c",
    "blk.c",
    "vsock.c",
    "net.c",
    "mmds.c",
    "fs.c",
    "balloon.c",
    "cpu.c",
    "pmem.c",
    "mem.c",
    "clock.c",
];

/// Files the sources include or the link uses.
const DEPENDENCIES: &[&str] = &["probe.h", "virtio.h", "probe.ld", "pvh_note.S"];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let guest = PathBuf::from("tests/guest");
    for s in SOURCES.iter().chain(DEPENDENCIES) {
        println!("cargo:rerun-if-changed={}", guest.join(s).display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    build(&cc, &guest, &out.join("probe.elf"), SOURCES);
    let pvh: Vec<&str> = SOURCES.iter().copied().chain(["pvh_note.S"]).collect();
    build(&cc, &guest, &out.join("probe-pvh.elf"), &pvh);
}
