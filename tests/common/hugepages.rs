//! The host's pool of 2 MiB hugetlbfs pages, for tests that need some.
//!
//! A test sizes the pool with [`Pool::with_available`], which holds a lock
//! on a machine-wide file for as long as the [`Pool`] lives: tests that
//! change the pool run one at a time, whichever test binary or process they
//! are in. Dropping the [`Pool`] puts `nr_hugepages` back as it was.
//! Where the pool cannot be sized (not root, no 2 MiB pages, memory too
//! fragmented), the test prints `skipped: <reason>` and gets `None`.

use std::fs::File;
use std::os::fd::AsRawFd;

const NR: &str = "/proc/sys/vm/nr_hugepages";
const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const LOCK: &str = "/tmp/husk-test-hugepages.lock";

/// Counts of the 2 MiB pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub free: u64,
    pub reserved: u64,
}

impl Counts {
    pub fn read() -> Counts {
        let n = |name: &str| -> u64 {
            std::fs::read_to_string(format!("{POOL}/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        Counts {
            total: n("nr_hugepages"),
            free: n("free_hugepages"),
            reserved: n("resv_hugepages"),
        }
    }

    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// The pool, sized for one test; restored when dropped.
pub struct Pool {
    old_total: u64,
    _lock: File,
}

impl Pool {
    /// Takes the lock and sizes the pool so that exactly `pages` pages are
    /// free and unreserved. None, after `skipped:`, when it cannot.
    pub fn with_available(pages: u64) -> Option<Pool> {
        let lock = match File::create(LOCK) {
            Ok(f) => f,
            Err(e) => {
                super::skip(&format!("cannot create {LOCK}: {e}"));
                return None;
            }
        };
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            super::skip(&format!("cannot lock {LOCK}: {e}"));
            return None;
        }
        let before = Counts::read();
        let pool = Pool {
            old_total: before.total,
            _lock: lock,
        };
        // Pages in use or reserved by others stay; the rest is sized.
        let held = before.total - before.available();
        if let Err(e) = std::fs::write(NR, (held + pages).to_string()) {
            super::skip(&format!("cannot size the huge page pool ({NR}): {e}"));
            return None;
        }
        let now = Counts::read();
        if now.available() != pages {
            super::skip(&format!(
                "asked for {pages} free 2 MiB huge pages, the host gave {} ({now:?})",
                now.available()
            ));
            return None;
        }
        Some(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Pages still in use (a VMM not yet reaped) become surplus pages
        // and go back to the host when freed.
        let _ = std::fs::write(NR, self.old_total.to_string());
    }
}

/// One mapping of /proc/PID/smaps: its header line and `Key: value` fields.
#[derive(Debug)]
pub struct Vma {
    pub header: String,
    pub fields: Vec<(String, String)>,
}

impl Vma {
    /// A field's number (the unit, kB, dropped).
    pub fn num(&self, key: &str) -> u64 {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }
}

/// Every mapping of process `pid`.
pub fn smaps(pid: u32) -> Vec<Vma> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let field = line
            .split_once(':')
            .filter(|(k, _)| !k.contains(' ') && !k.contains('-'));
        match (field, out.last_mut()) {
            (Some((k, v)), Some(vma)) => vma.fields.push((k.into(), v.trim().into())),
            _ => out.push(Vma {
                header: line.into(),
                fields: vec![],
            }),
        }
    }
    out
}

/// The mappings of `pid` that are `mib` MiB long: guest memory (no other
/// mapping of a VMM is that size).
pub fn guest_memory_vmas(pid: u32, mib: u64) -> Vec<Vma> {
    smaps(pid)
        .into_iter()
        .filter(|v| v.num("Size") == mib * 1024)
        .collect()
}
