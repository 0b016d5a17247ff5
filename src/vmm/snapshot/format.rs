//! The snapshot state file: a fixed header, a postcard body, a CRC64.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "HUSKSNAP"
//! 8       4     format version, u32 little endian
//! 12      4     architecture, u32 little endian (1 = x86_64)
//! 16      8     body length N, u64 little endian
//! 24      N     body: postcard-encoded state
//! 24+N    8     CRC-64/XZ of bytes 0..24+N, u64 little endian
//! ```
//! Everything is checked before the body is decoded: a file that is
//! truncated, longer than it says, from another version or architecture,
//! or whose CRC does not match, is refused with a message saying which.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub const MAGIC: &[u8; 8] = b"HUSKSNAP";
/// Bumped whenever the body's layout changes; older files are refused.
pub const FORMAT_VERSION: u32 = 2;
pub const ARCH_X86_64: u32 = 1;
const HEADER_LEN: usize = 24;
const CRC_LEN: usize = 8;
/// No state file is anywhere near this; a bigger one is not ours.
pub const MAX_STATE_FILE: u64 = 64 << 20;

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read snapshot {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("cannot write snapshot {path}: {err}")]
    Write { path: String, err: std::io::Error },
    #[error("{0} is not a husk snapshot (bad magic)")]
    Magic(String),
    #[error("snapshot {path} is truncated ({len} bytes, {expected} expected)")]
    Truncated {
        path: String,
        len: u64,
        expected: u64,
    },
    #[error("snapshot {path} is {len} bytes; the largest state file is {MAX_STATE_FILE}")]
    TooLarge { path: String, len: u64 },
    #[error("snapshot {path} has trailing bytes ({len} bytes, {expected} expected)")]
    Trailing {
        path: String,
        len: u64,
        expected: u64,
    },
    #[error("snapshot {path} is format version {found}; this husk reads version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("snapshot {path} is for architecture {found}, not x86_64")]
    Arch { path: String, found: u32 },
    #[error("snapshot {path} is corrupt: CRC64 {found:#018x}, computed {computed:#018x}")]
    Crc {
        path: String,
        found: u64,
        computed: u64,
    },
    #[error("snapshot {path} is corrupt: {err}")]
    Body { path: String, err: postcard::Error },
    #[error("cannot encode the snapshot: {0}")]
    Encode(postcard::Error),
}

fn show(path: &Path) -> String {
    crate::text::echo_path(path)
}

/// Encodes `state` as a whole state file.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let body = postcard::to_stdvec(state).map_err(FormatError::Encode)?;
    Ok(frame(&body))
}

/// Puts the header and CRC around an encoded body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a whole state file and decodes its body. `path` only names
/// the file in errors.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, FormatError> {
    let len = bytes.len() as u64;
    let truncated = |expected: u64| FormatError::Truncated {
        path: show(path),
        len,
        expected,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A prefix of the magic is a truncated snapshot, not a stranger.
        if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            return Err(truncated((HEADER_LEN + CRC_LEN) as u64));
        }
        return Err(FormatError::Magic(show(path)));
    }
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(truncated((HEADER_LEN + CRC_LEN) as u64));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            path: show(path),
            found: version,
        });
    }
    let arch = word(12);
    if arch != ARCH_X86_64 {
        return Err(FormatError::Arch {
            path: show(path),
            found: arch,
        });
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[16..24]);
    let body_len = u64::from_le_bytes(n);
    let expected = body_len
        .checked_add((HEADER_LEN + CRC_LEN) as u64)
        .ok_or_else(|| truncated(u64::MAX))?;
    if len < expected {
        return Err(truncated(expected));
    }
    if len > expected {
        return Err(FormatError::Trailing {
            path: show(path),
            len,
            expected,
        });
    }
    let end = bytes.len() - CRC_LEN;
    n.copy_from_slice(&bytes[end..]);
    let found = u64::from_le_bytes(n);
    let computed = CRC64.checksum(&bytes[..end]);
    if found != computed {
        return Err(FormatError::Crc {
            path: show(path),
            found,
            computed,
        });
    }
    postcard::from_bytes(&bytes[HEADER_LEN..end]).map_err(|err| FormatError::Body {
        path: show(path),
        err,
    })
}

/// Writes `state` to `path` atomically (a temporary file, fsynced, then
/// renamed), so a crash never leaves half a snapshot under that name.
pub fn write_file<T: Serialize>(path: &Path, state: &T) -> Result<u64, FormatError> {
    let bytes = encode(state)?;
    let err = |err| FormatError::Write {
        path: show(path),
        err,
    };
    let tmp = temp_name(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(bytes.len() as u64)
}

/// Reads and checks the state file at `path`.
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, FormatError> {
    let read_err = |err| FormatError::Read {
        path: show(path),
        err,
    };
    let f = crate::vmm::config::open_regular(path).map_err(|e| match e {
        crate::vmm::config::OpenRegularError::Io(e) => read_err(e),
        other => read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            other.to_string(),
        )),
    })?;
    let len = f.metadata().map_err(read_err)?.len();
    if len > MAX_STATE_FILE {
        return Err(FormatError::TooLarge {
            path: show(path),
            len,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_STATE_FILE + 1), &mut bytes)
        .map_err(read_err)?;
    decode(&bytes, path)
}

/// `<path>.tmp-<pid>`, next to `path`.
pub fn temp_name(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct S {
        a: u32,
        b: Vec<u8>,
    }

    fn sample() -> Vec<u8> {
        encode(&S {
            a: 7,
            b: vec![1, 2, 3],
        })
        .unwrap()
    }

    fn p() -> &'static Path {
        Path::new("s.snap")
    }

    #[test]
    fn round_trip() {
        let s: S = decode(&sample(), p()).unwrap();
        assert_eq!(s.a, 7);
        assert_eq!(s.b, [1, 2, 3]);
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = sample();
        let e = |bytes: &[u8]| decode::<S>(bytes, p()).unwrap_err().to_string();
        assert!(e(b"not a snapshot at all").contains("not a husk snapshot"));
        assert!(e(&good[..good.len() - 1]).contains("truncated"));
        assert!(e(&good[..12]).contains("truncated"));
        assert!(e(&good[..3]).contains("truncated"));
        let mut long = good.clone();
        long.push(0);
        assert!(e(&long).contains("trailing"));
        let mut v = good.clone();
        v[8] = 9;
        assert!(e(&v).contains("version 9"));
        let mut a = good.clone();
        a[12] = 2;
        assert!(e(&a).contains("architecture 2"));
        let mut c = good.clone();
        c[25] ^= 0x40;
        assert!(e(&c).contains("CRC64"));
        // A body length that overflows is truncation, not a panic.
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(e(&huge).contains("truncated"));
    }

    #[test]
    fn a_consistent_but_wrong_body_is_corrupt() {
        // Right header and CRC around a body that is not an S.
        let bytes = encode(&(1u8,)).unwrap();
        let err = decode::<S>(&bytes, p()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
