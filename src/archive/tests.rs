//! Round trips through `pack` and `unpack`, and hostile archives built by
//! hand: every refusal leaves nothing outside the destination.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::{EntryType, Header};

use super::*;

/// A directory under the system's temporary directory, removed on drop:
/// `dest/` to unpack into and `outside/` that must stay as it was.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "husk-archive-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("dest")).unwrap();
        fs::create_dir_all(p.join("outside")).unwrap();
        Tmp(p)
    }

    fn dest(&self) -> PathBuf {
        self.0.join("dest")
    }

    fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }

    /// Nothing appeared next to `dest`, `outside` (and `src`, the tree a
    /// round trip packs), nor in `outside`
    /// beyond `expected`.
    fn assert_outside_untouched(&self, expected: &[&str]) {
        let mut next_to = names(&self.0);
        next_to.retain(|n| n != "src");
        assert_eq!(next_to, ["dest", "outside"], "next to dest");
        assert_eq!(names(&self.outside()), expected, "in outside");
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        make_removable(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

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

fn packed(src: &Path, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    pack(src, name, &mut out).unwrap();
    out
}

fn entry_names(tar: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// One raw tar entry: the name and link name are copied into the header
/// as given (no checks), then `data`, padded to a block.
fn raw(name: &[u8], kind: EntryType, link: &[u8], data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    raw(name, EntryType::Regular, b"", data, 0o644)
}

fn archive(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = parts.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

fn unpack_into(
    tar: &[u8],
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, ArchiveError> {
    unpack(tar, dest, opts)
}

/// A tree with every kind of node `pack` keeps.
fn sample_tree(t: &Tmp) -> PathBuf {
    let top = t.0.join("src").join("top");
    fs::create_dir_all(top.join("a")).unwrap();
    fs::create_dir_all(top.join("pub")).unwrap();
    fs::create_dir_all(top.join("empty")).unwrap();
    fs::write(top.join("a/x"), b"hello").unwrap();
    fs::write(top.join("run"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(top.join("a/x"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(top.join("run"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(top.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(top.join("pub"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("/etc/passwd", top.join("abs")).unwrap();
    symlink("a/x", top.join("rel")).unwrap();
    symlink(format!("../..{}", "/t".repeat(60)), top.join("far")).unwrap();
    let long = top.join("l".repeat(60)).join("m".repeat(60));
    fs::create_dir_all(&long).unwrap();
    fs::write(long.join("deep.txt"), b"long").unwrap();
    fs::hard_link(top.join("a/x"), top.join("hl")).unwrap();
    mkfifo(&top.join("fifo"));
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    fs::File::options()
        .write(true)
        .open(top.join("a/x"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    fs::File::open(top.join("pub"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    top
}

#[test]
fn round_trip_keeps_types_modes_links_and_times() {
    let t = Tmp::new("round");
    let src = sample_tree(&t);
    let tar = packed(&src, "top");
    let names = entry_names(&tar);
    assert!(names.iter().any(|n| n.len() > 100), "{names:?}");
    let opts = UnpackOptions {
        same_owner: true,
        ..UnpackOptions::default()
    };
    let s = unpack_into(&tar, &t.dest(), &opts).unwrap();
    let top = t.dest().join("top");
    assert_eq!(fs::read(top.join("a/x")).unwrap(), b"hello");
    assert_eq!(mode(&top.join("a/x")), 0o644);
    assert_eq!(mode(&top.join("run")), 0o4755);
    assert_eq!(mode(&top.join("a")), 0o700);
    assert_eq!(mode(&top.join("pub")), 0o755);
    assert!(fs::read_dir(top.join("empty")).unwrap().next().is_none());
    assert_eq!(
        fs::read_link(top.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(fs::read_link(top.join("rel")).unwrap(), Path::new("a/x"));
    let far = format!("../..{}", "/t".repeat(60));
    assert_eq!(fs::read_link(top.join("far")).unwrap(), Path::new(&far));
    let deep = top
        .join("l".repeat(60))
        .join("m".repeat(60))
        .join("deep.txt");
    assert_eq!(fs::read(deep).unwrap(), b"long");
    let x = fs::metadata(top.join("a/x")).unwrap();
    assert_eq!(fs::metadata(top.join("hl")).unwrap().ino(), x.ino());
    assert_eq!(x.mtime(), 1_234_567_890);
    assert_eq!(
        fs::metadata(top.join("pub")).unwrap().mtime(),
        1_234_567_890
    );
    assert!(fs::metadata(top.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let me = fs::metadata(&src).unwrap();
    assert_eq!((x.uid(), x.gid()), (me.uid(), me.gid()));
    assert_eq!(
        (
            s.files,
            s.dirs,
            s.symlinks,
            s.hard_links,
            s.special,
            s.bytes,
            s.skipped
        ),
        (3, 6, 3, 1, 1, 5 + 10 + 4, 0)
    );
    t.assert_outside_untouched(&[]);
}

#[test]
fn setuid_is_kept_only_with_same_owner() {
    let t = Tmp::new("suid");
    let src = sample_tree(&t);
    let tar = packed(&src, "top");
    unpack_into(&tar, &t.dest(), &UnpackOptions::default()).unwrap();
    assert_eq!(mode(&t.dest().join("top/run")), 0o755);
    assert_eq!(mode(&t.dest().join("top/a/x")), 0o644);
}

#[test]
fn rename_top_replaces_the_first_component_of_paths_and_links() {
    let t = Tmp::new("rename");
    let src = sample_tree(&t);
    let tar = packed(&src, "top");
    let opts = UnpackOptions {
        rename_top: Some("backup".into()),
        ..UnpackOptions::default()
    };
    unpack_into(&tar, &t.dest(), &opts).unwrap();
    assert_eq!(names(&t.dest()), ["backup"]);
    let b = t.dest().join("backup");
    assert_eq!(fs::read(b.join("a/x")).unwrap(), b"hello");
    assert_eq!(
        fs::metadata(b.join("hl")).unwrap().ino(),
        fs::metadata(b.join("a/x")).unwrap().ino()
    );
    for bad in ["", "..", "a/b"] {
        let opts = UnpackOptions {
            rename_top: Some(bad.into()),
            ..UnpackOptions::default()
        };
        let e = unpack_into(&tar, &t.dest(), &opts).unwrap_err();
        assert!(
            matches!(e, ArchiveError::InvalidName { .. }),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn dot_packs_a_directorys_contents_without_a_top_entry() {
    let t = Tmp::new("dot");
    let src = sample_tree(&t);
    let tar = packed(&src, ".");
    let names = entry_names(&tar);
    assert!(names.contains(&"a/".to_string()), "{names:?}");
    assert!(names
        .iter()
        .all(|n| !n.starts_with("top") && n != "." && n != "./"));
    unpack_into(&tar, &t.dest(), &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(t.dest().join("a/x")).unwrap(), b"hello");
    assert!(t.dest().join("pub").is_dir());

    let e = pack(&src.join("a/x"), ".", Vec::new()).unwrap_err();
    assert!(matches!(e, ArchiveError::NotADirectory { .. }), "{e}");
}

#[test]
fn single_files_and_symlinks_pack_under_the_given_name() {
    let t = Tmp::new("single");
    let src = sample_tree(&t);
    assert_eq!(entry_names(&packed(&src.join("a/x"), "copy")), ["copy"]);
    // A symlink is packed as the link, not its target.
    let tar = packed(&src.join("rel"), "rel");
    let mut ar = tar::Archive::new(&tar[..]);
    let e = ar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(e.header().entry_type(), EntryType::Symlink);
    assert_eq!(&*e.link_name_bytes().unwrap(), b"a/x");

    for bad in ["", "..", "a/b", "a\0b"] {
        let e = pack(&src, bad, Vec::new()).unwrap_err();
        assert!(
            matches!(e, ArchiveError::InvalidName { .. }),
            "{bad:?}: {e}"
        );
        assert!(e.is_refusal());
    }
    let e = pack(&t.0.join("missing"), "m", Vec::new()).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn an_unreadable_file_fails_the_pack_naming_it() {
    if is_root() {
        // Root reads any file; nothing to test.
        return;
    }
    let t = Tmp::new("unreadable");
    let src = t.0.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("secret"), b"x").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let e = pack(&src, "src", Vec::new()).unwrap_err();
    assert!(e.to_string().contains("secret"), "{e}");
}

#[test]
fn a_read_only_directory_is_filled_before_its_mode_is_set() {
    let t = Tmp::new("readonly");
    let tar = archive(&[
        raw(b"ro/", EntryType::Directory, b"", b"", 0o555),
        file(b"ro/f", b"data"),
        raw(b"ro/sub/", EntryType::Directory, b"", b"", 0o500),
        file(b"ro/sub/g", b"more"),
    ]);
    unpack_into(&tar, &t.dest(), &UnpackOptions::default()).unwrap();
    assert_eq!(mode(&t.dest().join("ro")), 0o555);
    assert_eq!(mode(&t.dest().join("ro/sub")), 0o500);
    assert_eq!(fs::read(t.dest().join("ro/sub/g")).unwrap(), b"more");
    assert_eq!(
        fs::metadata(t.dest().join("ro")).unwrap().mtime(),
        1_000_000_000
    );
}

#[test]
fn existing_files_and_symlinks_are_replaced_never_written_through() {
    let t = Tmp::new("replace");
    fs::write(t.outside().join("target"), b"keep").unwrap();
    symlink(t.outside().join("target"), t.dest().join("f")).unwrap();
    symlink("../outside/target", t.dest().join("g")).unwrap();
    fs::write(t.dest().join("h"), b"old").unwrap();
    let tar = archive(&[file(b"f", b"new"), file(b"./g", b"new"), file(b"h", b"new")]);
    unpack_into(&tar, &t.dest(), &UnpackOptions::default()).unwrap();
    for n in ["f", "g", "h"] {
        let p = t.dest().join(n);
        assert!(fs::symlink_metadata(&p).unwrap().is_file(), "{n}");
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }
    assert_eq!(fs::read(t.outside().join("target")).unwrap(), b"keep");
    t.assert_outside_untouched(&["target"]);
}

/// Unpacks `parts` into a fresh destination; the archive must be refused
/// with an error naming `entry`, and nothing may appear outside.
fn assert_refused(
    tag: &str,
    setup: impl Fn(&Tmp),
    parts: impl Fn(&Tmp) -> Vec<Vec<u8>>,
    entry: &str,
) {
    let t = Tmp::new(tag);
    fs::write(t.outside().join("secret"), b"secret").unwrap();
    setup(&t);
    let tar = archive(&parts(&t));
    let e = unpack_into(&tar, &t.dest(), &UnpackOptions::default()).unwrap_err();
    assert!(e.is_refusal(), "{tag}: {e}");
    assert!(
        e.to_string().contains(entry),
        "{tag}: {e} should name {entry}"
    );
    t.assert_outside_untouched(&["secret"]);
    assert_eq!(
        fs::read(t.outside().join("secret")).unwrap(),
        b"secret",
        "{tag}"
    );
    assert_eq!(mode(&t.outside().join("secret")), 0o644, "{tag}");
}

fn abs(t: &Tmp, rel: &str) -> Vec<u8> {
    t.outside().join(rel).as_os_str().as_bytes().to_vec()
}

#[test]
fn hostile_paths_are_refused() {
    let none = |_: &Tmp| {};
    assert_refused("dotdot", none, |_| vec![file(b"../x", b"evil")], "../x");
    // An absolute path pointing at our own `outside`, so that a broken
    // unpacker would write there rather than anywhere that matters.
    assert_refused(
        "absolute",
        none,
        |t| vec![file(&abs(t, "x"), b"evil")],
        "outside/x",
    );
    assert_refused(
        "inner-dotdot",
        none,
        |_| vec![file(b"a/../../x", b"evil")],
        "a/../../x",
    );
    assert_refused(
        "nul",
        none,
        |_| {
            vec![
                raw(
                    b"././@LongLink",
                    EntryType::GNULongName,
                    b"",
                    b"a\0b\0",
                    0o644,
                ),
                file(b"placeholder", b"x"),
            ]
        },
        "a",
    );
}

#[test]
fn writing_through_an_archive_symlink_is_refused() {
    let none = |_: &Tmp| {};
    // `link -> /etc` then `link/passwd`, with our `outside` for /etc.
    assert_refused(
        "abs-link",
        none,
        |t| {
            vec![
                raw(b"link", EntryType::Symlink, &abs(t, ""), b"", 0o777),
                file(b"link/passwd", b"evil"),
            ]
        },
        "link/passwd",
    );
    assert_refused(
        "dotdot-link",
        none,
        |_| {
            vec![
                raw(b"link", EntryType::Symlink, b"..", b"", 0o777),
                file(b"link/x", b"evil"),
            ]
        },
        "link/x",
    );
    assert_refused(
        "deep-link",
        none,
        |_| {
            vec![
                raw(b"d/", EntryType::Directory, b"", b"", 0o755),
                raw(b"d/link", EntryType::Symlink, b"../../outside", b"", 0o777),
                raw(b"d/link/sub/", EntryType::Directory, b"", b"", 0o755),
            ]
        },
        "d/link/sub",
    );
}

#[test]
fn a_symlink_already_in_dest_is_not_a_parent() {
    let setup = |t: &Tmp| symlink("../outside", t.dest().join("pre")).unwrap();
    assert_refused(
        "pre-link",
        setup,
        |_| vec![file(b"pre/x", b"evil")],
        "pre/x",
    );
    // A directory entry over it is a directory over a non-directory.
    assert_refused(
        "pre-link-dir",
        setup,
        |_| {
            vec![
                raw(b"pre/", EntryType::Directory, b"", b"", 0o755),
                file(b"pre/x", b"evil"),
            ]
        },
        "pre",
    );
}

#[test]
fn hard_links_must_name_earlier_entries_beneath_dest() {
    let none = |_: &Tmp| {};
    assert_refused(
        "link-dotdot",
        none,
        |_| vec![raw(b"h", EntryType::Link, b"../outside/secret", b"", 0o644)],
        "h",
    );
    assert_refused(
        "link-abs",
        none,
        |t| vec![raw(b"h", EntryType::Link, &abs(t, "secret"), b"", 0o644)],
        "secret",
    );
    // Beneath dest, but through a symlink the archive made.
    assert_refused(
        "link-via-symlink",
        none,
        |_| {
            vec![
                raw(b"s", EntryType::Symlink, b"../outside", b"", 0o777),
                raw(b"h", EntryType::Link, b"s/secret", b"", 0o644),
            ]
        },
        "s/secret",
    );
    // A file dest had, not one of the archive's.
    assert_refused(
        "link-not-in-archive",
        |t| fs::write(t.dest().join("mine"), b"mine").unwrap(),
        |_| vec![raw(b"h", EntryType::Link, b"mine", b"", 0o644)],
        "mine",
    );
}

#[test]
fn directories_and_non_directories_do_not_replace_each_other() {
    let t = Tmp::new("dirfile");
    fs::write(t.dest().join("f"), b"file").unwrap();
    fs::create_dir(t.dest().join("d")).unwrap();
    fs::write(t.dest().join("d/keep"), b"keep").unwrap();
    let dir_over_file = archive(&[raw(b"f/", EntryType::Directory, b"", b"", 0o755)]);
    let e = unpack_into(&dir_over_file, &t.dest(), &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::DirOverNonDir { .. }), "{e}");
    let file_over_dir = archive(&[file(b"d", b"x")]);
    let e = unpack_into(&file_over_dir, &t.dest(), &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::NonDirOverDir { .. }), "{e}");
    let under_file = archive(&[file(b"f/x", b"x")]);
    let e = unpack_into(&under_file, &t.dest(), &UnpackOptions::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::ParentNotDir { .. }), "{e}");
    assert_eq!(fs::read(t.dest().join("f")).unwrap(), b"file");
    assert_eq!(fs::read(t.dest().join("d/keep")).unwrap(), b"keep");
    // A directory over a directory merges.
    let merge = archive(&[
        raw(b"d/", EntryType::Directory, b"", b"", 0o750),
        file(b"d/new", b"n"),
    ]);
    unpack_into(&merge, &t.dest(), &UnpackOptions::default()).unwrap();
    assert_eq!(names(&t.dest().join("d")), ["keep", "new"]);
    assert_eq!(mode(&t.dest().join("d")), 0o750);
}

#[test]
fn pax_paths_are_honoured_and_checked() {
    fn pax(path: &str) -> Vec<u8> {
        let rec = format!("path={path}\n");
        let mut len = rec.len() + 3;
        if format!("{len} {rec}").len() != len {
            len += 1;
        }
        let body = format!("{len} {rec}");
        raw(
            b"PaxHeader",
            EntryType::XHeader,
            b"",
            body.as_bytes(),
            0o644,
        )
    }
    let long = format!("{}/{}", "p".repeat(150), "file");
    let t = Tmp::new("pax");
    let tar = archive(&[pax(&long), file(b"short", b"pax")]);
    unpack_into(&tar, &t.dest(), &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(t.dest().join(&long)).unwrap(), b"pax");
    assert!(!t.dest().join("short").exists());
    assert_refused(
        "pax-dotdot",
        |_| {},
        |_| vec![pax("../evil"), file(b"ok", b"x")],
        "../evil",
    );
}

#[test]
fn limits_are_enforced() {
    let t = Tmp::new("limits");
    // A GNU long name larger than the header budget: refused without
    // reading it into memory.
    let mut huge = raw(b"././@LongLink", EntryType::GNULongName, b"", b"", 0o644);
    let mut h = Header::new_gnu();
    h.as_mut_bytes().copy_from_slice(&huge[..512]);
    h.set_size(4 << 20);
    h.set_cksum();
    huge[..512].copy_from_slice(h.as_bytes());
    huge.extend(std::iter::repeat_n(b'a', 4 << 20));
    let e = unpack_into(
        &archive(&[huge, file(b"x", b"x")]),
        &t.dest(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::HeaderTooLarge), "{e}");

    let too_long = "a/".repeat(2100) + "x";
    let too_deep = "d/".repeat(600) + "x";
    for (path, why) in [(too_long, "4096"), (too_deep, "512")] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &path, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = unpack_into(&tar, &t.dest(), &Default::default()).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    assert!(names(&t.dest()).is_empty());

    // A truncated archive is an error, not a short file.
    let mut cut = file(b"cut", &[7; 2000]);
    cut.truncate(512 + 1000);
    let e = unpack_into(&cut, &t.dest(), &Default::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::Read(_)), "{e}");
}

#[test]
fn devices_are_made_only_when_asked() {
    let t = Tmp::new("devices");
    let mut null = raw(b"null", EntryType::Char, b"", b"", 0o666);
    let mut h = Header::new_gnu();
    h.as_mut_bytes().copy_from_slice(&null[..512]);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    null.copy_from_slice(h.as_bytes());
    let tar = archive(&[null, raw(b"sock", EntryType::new(b'V'), b"", b"", 0o644)]);
    let s = unpack_into(&tar, &t.dest(), &Default::default()).unwrap();
    assert_eq!((s.skipped, s.special), (2, 0));
    assert!(names(&t.dest()).is_empty());
    if is_root() {
        let opts = UnpackOptions {
            devices: true,
            same_owner: true,
            ..Default::default()
        };
        let s = unpack_into(&tar, &t.dest(), &opts).unwrap();
        assert_eq!((s.skipped, s.special), (1, 1));
        let m = fs::symlink_metadata(t.dest().join("null")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), libc::makedev(1, 3));
        assert_eq!(m.mode() & 0o7777, 0o666);
    }
}

#[test]
fn stat_reports_go_modes_and_rfc3339_times() {
    let t = Tmp::new("stat");
    let src = sample_tree(&t);
    let x = stat(&src.join("a/x")).unwrap();
    assert_eq!((x.name.as_str(), x.size, x.mode), ("x", 5, 0o644));
    assert_eq!(x.mtime, "2009-02-13T23:31:30Z");
    let d = stat(&src.join("a")).unwrap();
    assert!(d.is_dir() && d.mode == (1 << 31) | 0o700);
    let l = stat(&src.join("rel")).unwrap();
    assert!(l.is_symlink());
    assert_eq!(l.link_target, "a/x");
    assert_eq!(stat(&src.join("run")).unwrap().mode, (1 << 23) | 0o755);
    let json = serde_json::to_value(&l).unwrap();
    assert_eq!(json["linkTarget"], "a/x");
    assert!(stat(&src.join("nope")).unwrap_err().is_not_found());

    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(1_700_000_000, 120_000_000),
        "2023-11-14T22:13:20.12Z"
    );
    assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
    assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
    for m in [
        libc::S_IFREG | 0o4755,
        libc::S_IFDIR | 0o1777,
        libc::S_IFLNK | 0o777,
        libc::S_IFCHR | 0o666,
        libc::S_IFBLK | 0o660,
        libc::S_IFIFO | 0o2640,
        libc::S_IFSOCK | 0o755,
    ] {
        assert_eq!(unix_mode(go_mode(m)), m, "{m:o}");
    }
}

#[test]
fn resolve_in_root_treats_root_as_slash() {
    let t = Tmp::new("resolve");
    let root = fs::canonicalize(t.0.join("dest")).unwrap();
    fs::create_dir_all(root.join("real/sub")).unwrap();
    symlink("/real", root.join("abs")).unwrap();
    symlink("../../../../real", root.join("up")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    let r = |p: &str, follow: bool| resolve_in_root(&root, p, follow);
    assert_eq!(r("/abs/sub", false).unwrap(), root.join("real/sub"));
    assert_eq!(r("up/sub", false).unwrap(), root.join("real/sub"));
    assert_eq!(r("/../../..", false).unwrap(), root);
    assert_eq!(r("abs", false).unwrap(), root.join("abs"));
    assert_eq!(r("abs", true).unwrap(), root.join("real"));
    assert_eq!(r("abs/", false).unwrap(), root.join("real"));
    assert_eq!(
        r("/real/new/file", false).unwrap(),
        root.join("real/new/file")
    );
    assert_eq!(r("", false).unwrap(), root);
    let e = r("loop1/x", false).unwrap_err();
    assert!(matches!(e, ArchiveError::SymlinkLoop { .. }), "{e}");
    assert!(r("a\0b", false).unwrap_err().is_refusal());
    assert!(resolve_in_root(&t.0.join("missing"), "x", false)
        .unwrap_err()
        .is_not_found());
}

#[test]
fn unpack_refuses_a_destination_that_is_not_a_directory() {
    let t = Tmp::new("dest");
    let tar = archive(&[file(b"x", b"x")]);
    symlink(t.outside(), t.0.join("dest/link")).unwrap();
    let e = unpack_into(&tar, &t.dest().join("link"), &Default::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::NotADirectory { .. }), "{e}");
    let e = unpack_into(&tar, &t.dest().join("missing"), &Default::default()).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    t.assert_outside_untouched(&[]);
}

#[test]
fn parents_open_beneath_with_and_without_openat2() {
    use std::os::fd::AsFd;
    let t = Tmp::new("beneath");
    let d = t.dest();
    fs::create_dir_all(d.join("a/b")).unwrap();
    fs::write(d.join("a/f"), b"").unwrap();
    symlink("b", d.join("a/inner")).unwrap();
    symlink("../outside", d.join("up")).unwrap();
    let root = super::fs::open_dir(&d).unwrap();
    for open in [super::fs::open_beneath, super::fs::walk_beneath] {
        let errno = |p: &str| open(root.as_fd(), p.as_bytes()).unwrap_err().raw_os_error();
        assert!(open(root.as_fd(), b"a/b").is_ok());
        assert!(open(root.as_fd(), b"").is_ok());
        assert!(matches!(
            errno("a/inner"),
            Some(libc::ELOOP | libc::ENOTDIR)
        ));
        assert!(matches!(errno("up"), Some(libc::ELOOP | libc::ENOTDIR)));
        assert!(matches!(errno("up/x"), Some(libc::ELOOP | libc::ENOTDIR)));
        assert!(matches!(
            errno("a/inner/x"),
            Some(libc::ELOOP | libc::ENOTDIR)
        ));
        assert_eq!(errno("a/f"), Some(libc::ENOTDIR));
        assert_eq!(errno("a/missing"), Some(libc::ENOENT));
        assert_eq!(errno(".."), Some(libc::EXDEV));
    }
}

#[test]
fn sparse_entries_unpack_with_holes() {
    let t = Tmp::new("sparse");
    let hole = 4 << 20;
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(512);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(hole);
    gnu.sparse[0].set_length(512);
    gnu.set_real_size(hole + 512);
    h.set_cksum();
    let mut entry = h.as_bytes().to_vec();
    entry.extend_from_slice(&[b'z'; 512]);
    let s = unpack_into(&archive(&[entry]), &t.dest(), &Default::default()).unwrap();
    assert_eq!(s.bytes, hole + 512);
    let p = t.dest().join("sparse");
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len() as u64, hole + 512);
    assert!(data[..hole as usize].iter().all(|&b| b == 0));
    assert!(data[hole as usize..].iter().all(|&b| b == b'z'));
    assert!(
        fs::metadata(&p).unwrap().blocks() * 512 < hole,
        "no hole made"
    );
}
