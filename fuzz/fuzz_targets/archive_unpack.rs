//! Unpacks the input (after a first byte of options) as a tar stream into
//! a fresh directory: any error is fine, a panic is not, and nothing may
//! appear outside the directory, whatever symlinks, `..` components,
//! absolute paths or hard links the archive holds.

#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use husk::archive::{unpack, UnpackOptions};
use libfuzzer_sys::fuzz_target;

/// Makes every directory under `p` writable, so it can be removed
/// whatever modes the archive gave them.
fn make_removable(p: &Path) {
    let Ok(m) = fs::symlink_metadata(p) else {
        return;
    };
    if m.is_dir() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            make_removable(&e.path());
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, tar)) = data.split_first() else {
        return;
    };
    let base = std::env::temp_dir().join(format!("husk-fuzz-archive-{}", std::process::id()));
    make_removable(&base);
    let _ = fs::remove_dir_all(&base);
    let dest = base.join("dest");
    fs::create_dir_all(&dest).unwrap();
    fs::create_dir_all(base.join("outside")).unwrap();
    let opts = UnpackOptions {
        same_owner: flags & 1 != 0,
        // Device nodes would be real ones when the fuzzer runs as root.
        devices: false,
        rename_top: (flags & 2 != 0).then(|| "top".to_string()),
    };
    let _ = unpack(tar, &dest, &opts);
    assert_eq!(names(&base), ["dest", "outside"]);
    assert!(names(&base.join("outside")).is_empty());
});
