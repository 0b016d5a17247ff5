//! Reads the input as a `husk jailer` command line (arguments split at NUL
//! bytes) and parses it as the jailer does: no input may panic, and any
//! path inside the jail that parses stays inside it (absolute, no `..`),
//! any cgroup file that parses is one name in the VM's cgroup directory.

#![no_main]

use std::path::Component;

use clap::Parser;
use husk::jail::jailer::config::{jail_path, parse_cgroup, parse_mount};
use husk::jail::jailer::JailerArgs;
use libfuzzer_sys::fuzz_target;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: JailerArgs,
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let argv: Vec<&str> = std::iter::once("husk-jailer")
        .chain(text.split('\0'))
        .collect();
    let _ = Cli::try_parse_from(argv);
    for piece in text.split('\0') {
        if let Ok(p) = jail_path(piece) {
            assert!(p.is_absolute(), "{piece:?} -> {p:?}");
            assert!(
                p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{piece:?} -> {p:?}"
            );
        }
        if let Ok(m) = parse_mount(piece) {
            assert!(m.jail.is_absolute(), "{piece:?}");
        }
        if let Ok(c) = parse_cgroup(piece) {
            assert!(!c.file.contains('/') && c.file != ".." && c.file != ".", "{piece:?}");
        }
    }
});
