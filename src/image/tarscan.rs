//! Reading a tar archive without extracting it: a walker over its headers
//! that bounds everything it keeps in memory, and a catalog of what the
//! archive holds, with links resolved inside the archive.
//!
//! The `tar` crate reads GNU long names and pax records whole, however
//! large their headers say they are; this walker caps them, refuses names
//! that climb out of the archive, and reports where each entry's data
//! starts, so that a plain archive can be read again by seeking straight
//! to the entries that matter.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};

use tar::{EntryType, Header};

use crate::text::{echo, echo_bytes};

/// Longest pax record or GNU long name or link.
pub const MAX_META: u64 = 1 << 20;
/// Longest entry name or link target.
pub const MAX_NAME: usize = 4096;
/// Most entries (not counting pax and long-name records) in one archive.
pub const MAX_ENTRIES: usize = 100_000;
const MAX_SYMLINK_HOPS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The input does not start with a tar header.
    #[error("it is not a tar archive")]
    NotTar,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the archive is truncated")]
    Truncated,
    #[error("the archive is damaged at byte {at}: {why}")]
    Corrupt { at: u64, why: &'static str },
    #[error("archive entry {0} escapes the archive")]
    Escape(String),
    #[error("archive entry {name} is a {what}, which husk does not read")]
    Unsupported { name: String, what: &'static str },
    #[error("the archive unpacks to more than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("the archive has more than {0}")]
    TooMany(String),
    #[error("the archive holds {0} twice")]
    Duplicate(String),
}

/// What one entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// Relative to the link's directory; None when not UTF-8.
    Symlink(Option<String>),
    /// Relative to the archive's root; None when not UTF-8.
    Hardlink(Option<String>),
    Other,
}

/// One entry of an archive, as its headers describe it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its place among the archive's entries, from 0.
    pub ordinal: usize,
    /// The path without `.` components or a leading `/`; None when it is
    /// not UTF-8 (no manifest can name it then).
    pub name: Option<String>,
    pub kind: Kind,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Where that data starts in the (uncompressed) tar stream.
    pub offset: u64,
}

/// Input the walker reads: a stream, which it may be able to skip in
/// without reading.
pub trait Input: Read {
    /// Moves `n` bytes on; returns how many there were (fewer at the end).
    fn skip(&mut self, n: u64) -> io::Result<u64>;
}

/// A plain file, read from its start; skipping seeks.
pub struct FileInput<'a> {
    r: BufReader<&'a File>,
    pos: u64,
    len: u64,
}

impl<'a> FileInput<'a> {
    /// Reads `file` from its current offset, which must be its start.
    pub fn new(file: &'a File, len: u64) -> Self {
        FileInput {
            r: BufReader::with_capacity(64 * 1024, file),
            pos: 0,
            len,
        }
    }
}

impl Read for FileInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Input for FileInput<'_> {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let n = n.min(self.len.saturating_sub(self.pos));
        let step = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.r.seek_relative(step)?;
        self.pos += n;
        Ok(n)
    }
}

/// Any stream (a decompressor, say); skipping reads and discards.
pub struct StreamInput<R>(pub R);

impl<R: Read> Read for StreamInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for StreamInput<R> {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut (&mut self.0).take(n), &mut io::sink())
    }
}

/// Walks the headers of a tar stream, one entry at a time. Data the
/// caller does not read is skipped (sought past, where the input can).
pub struct Walker<I> {
    input: I,
    /// Offset of the next byte of the tar stream.
    pos: u64,
    /// Unread data of the current entry, and the padding after it.
    left: u64,
    pad: u64,
    headers: u64,
    entries: usize,
    /// Data bytes of every header so far, pax and long-name records too.
    data_total: u64,
    /// Most bytes the tar stream may have.
    limit: u64,
    done: bool,
}

/// Reads until `buf` is full or the input ends; returns how much was read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether a 512-byte block carries a valid tar header checksum (the
/// unsigned sum, or the signed one some old tars wrote).
pub fn checksum_ok(block: &[u8; 512]) -> bool {
    let Ok(stored) = Header::from_byte_slice(block).cksum() else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    stored == unsigned || i64::from(stored) == i64::from(signed)
}

fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// The archive path of a raw name: no empty or `.` components, no leading
/// `/`; `..` is refused. None when the name is not UTF-8.
pub fn normalize(raw: &[u8]) -> Result<Option<String>, ScanError> {
    if raw.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(ScanError::Escape(echo_bytes(raw)));
    }
    let Ok(s) = std::str::from_utf8(raw) else {
        return Ok(None);
    };
    let parts: Vec<&str> = s
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    Ok(Some(parts.join("/")))
}

impl<I: Input> Walker<I> {
    /// Walks `input`, refusing a stream longer than `limit` bytes.
    pub fn new(input: I, limit: u64) -> Self {
        Walker {
            input,
            pos: 0,
            left: 0,
            pad: 0,
            headers: 0,
            entries: 0,
            data_total: 0,
            limit,
            done: false,
        }
    }

    /// Data bytes the headers read so far declare, pax and long-name
    /// records included.
    pub fn data_total(&self) -> u64 {
        self.data_total
    }

    fn skip_exact(&mut self, n: u64) -> Result<(), ScanError> {
        if n == 0 {
            return Ok(());
        }
        let k = self.input.skip(n)?;
        self.pos += k;
        if k < n {
            return Err(ScanError::Truncated);
        }
        Ok(())
    }

    /// The data of a pax or long-name record, which `next` keeps.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, ScanError> {
        let mut data = Vec::with_capacity(size as usize);
        (&mut self.input).take(size).read_to_end(&mut data)?;
        self.pos += data.len() as u64;
        if (data.len() as u64) < size {
            return Err(ScanError::Truncated);
        }
        self.skip_exact(padding(size))?;
        Ok(data)
    }

    /// The next entry, skipping whatever of the current one was not read;
    /// None at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ScanError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.skip_exact(rest)?;

        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let at = self.pos;
            let mut block = [0u8; 512];
            let n = read_full(&mut self.input, &mut block)?;
            self.pos += n as u64;
            let pending = long_name.is_some() || long_link.is_some() || pax_size.is_some();
            if n == 0 && !pending {
                // The end, without the two zero blocks: as tar does.
                self.done = true;
                return Ok(None);
            }
            if n < 512 {
                return Err(if self.headers == 0 {
                    ScanError::NotTar
                } else {
                    ScanError::Truncated
                });
            }
            if block.iter().all(|&b| b == 0) {
                if pending {
                    return Err(ScanError::Corrupt {
                        at,
                        why: "a pax or long-name record describes no entry",
                    });
                }
                self.done = true;
                return Ok(None);
            }
            if !checksum_ok(&block) {
                return Err(if self.headers == 0 {
                    ScanError::NotTar
                } else {
                    ScanError::Corrupt {
                        at,
                        why: "a header's checksum is wrong",
                    }
                });
            }
            self.headers += 1;
            let header = Header::from_byte_slice(&block);
            let mut size = header.entry_size().map_err(|_| ScanError::Corrupt {
                at,
                why: "a header's size field is not a number",
            })?;
            let kind = header.entry_type();
            let meta = matches!(kind.as_byte(), b'L' | b'K' | b'x' | b'g');
            if meta {
                if size > MAX_META {
                    return Err(ScanError::Corrupt {
                        at,
                        why: "a pax or long-name record is larger than 1 MiB",
                    });
                }
                self.count(size)?;
                let data = self.read_meta(size)?;
                match kind.as_byte() {
                    b'L' => long_name = Some(trim_nul(data)),
                    b'K' => long_link = Some(trim_nul(data)),
                    b'x' => {
                        for ext in tar::PaxExtensions::new(&data) {
                            let ext = ext.map_err(|_| ScanError::Corrupt {
                                at,
                                why: "a pax record is malformed",
                            })?;
                            let key = ext.key_bytes();
                            if key == b"path" {
                                long_name = Some(ext.value_bytes().to_vec());
                            } else if key == b"linkpath" {
                                long_link = Some(ext.value_bytes().to_vec());
                            } else if key == b"size" {
                                let v = std::str::from_utf8(ext.value_bytes())
                                    .ok()
                                    .and_then(|v| v.parse::<u64>().ok())
                                    .ok_or(ScanError::Corrupt {
                                        at,
                                        why: "a pax size is not a number",
                                    })?;
                                pax_size = Some(v);
                            } else if key.starts_with(b"GNU.sparse.") {
                                return Err(ScanError::Unsupported {
                                    name: echo_bytes(&header.path_bytes()),
                                    what: "sparse file",
                                });
                            }
                        }
                    }
                    // Global pax records: nothing an import needs.
                    _ => {}
                }
                continue;
            }
            if let Some(s) = pax_size {
                size = s;
            }
            let raw_name = long_name.unwrap_or_else(|| header.path_bytes().into_owned());
            if kind == EntryType::GNUSparse {
                return Err(ScanError::Unsupported {
                    name: echo_bytes(&raw_name),
                    what: "sparse file",
                });
            }
            let raw_link =
                long_link.or_else(|| header.link_name_bytes().map(|l| trim_nul(l.into_owned())));
            if raw_name.len() > MAX_NAME || raw_link.as_ref().is_some_and(|l| l.len() > MAX_NAME) {
                return Err(ScanError::Corrupt {
                    at,
                    why: "a name is longer than 4096 bytes",
                });
            }
            let name = normalize(&raw_name)?;
            let link = raw_link.and_then(|l| String::from_utf8(l).ok());
            let kind = match kind {
                EntryType::Regular | EntryType::Continuous => Kind::File,
                EntryType::Directory => Kind::Dir,
                EntryType::Symlink => Kind::Symlink(link),
                EntryType::Link => Kind::Hardlink(link),
                _ => Kind::Other,
            };
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(ScanError::TooMany(format!("{MAX_ENTRIES} entries")));
            }
            self.count(size)?;
            self.left = size;
            self.pad = padding(size);
            return Ok(Some(Entry {
                ordinal: self.entries - 1,
                name,
                kind,
                size,
                offset: self.pos,
            }));
        }
    }

    /// Accounts for `size` bytes of data after the current header,
    /// refusing them when they take the stream past its limit.
    fn count(&mut self, size: u64) -> Result<(), ScanError> {
        let end = self
            .pos
            .checked_add(size)
            .and_then(|e| e.checked_add(padding(size)));
        if end.is_none_or(|e| e > self.limit) {
            return Err(ScanError::TooLarge { limit: self.limit });
        }
        self.data_total += size;
        Ok(())
    }

    /// The current entry's data, read at most once.
    pub fn data(&mut self) -> EntryData<'_, I> {
        EntryData { walker: self }
    }
}

/// Reads the current entry's data; ends exactly where the entry does.
pub struct EntryData<'a, I> {
    walker: &'a mut Walker<I>,
}

impl<I: Input> Read for EntryData<'_, I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let w = &mut *self.walker;
        if w.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(w.left).unwrap_or(usize::MAX));
        let n = w.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive is truncated",
            ));
        }
        w.left -= n as u64;
        w.pos += n as u64;
        Ok(n)
    }
}

/// What resolving a name in the archive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A regular file: this entry's ordinal.
    File(usize),
    Missing,
    /// A directory or other non-file.
    NotFile,
    Loop,
}

/// Every entry of an archive, by ordinal and by name.
#[derive(Default)]
pub struct Catalog {
    entries: Vec<Entry>,
    names: HashMap<String, usize>,
    name_bytes: usize,
}

/// Most bytes of names a catalog keeps.
const MAX_NAME_BYTES: usize = 16 << 20;

impl Catalog {
    /// Adds the next entry. A name met twice is refused, unless both are
    /// directories: which of two would count is not worth guessing.
    pub fn add(&mut self, e: Entry) -> Result<(), ScanError> {
        debug_assert_eq!(e.ordinal, self.entries.len());
        if let Some(name) = e.name.as_deref().filter(|n| !n.is_empty()) {
            self.name_bytes += name.len();
            if self.name_bytes > MAX_NAME_BYTES {
                return Err(ScanError::TooMany("16 MiB of entry names".into()));
            }
            if let Some(&prev) = self.names.get(name) {
                if !(self.entries[prev].kind == Kind::Dir && e.kind == Kind::Dir) {
                    return Err(ScanError::Duplicate(echo(name).into_owned()));
                }
            } else {
                self.names.insert(name.to_string(), e.ordinal);
            }
        }
        self.entries.push(e);
        Ok(())
    }

    pub fn get(&self, ordinal: usize) -> &Entry {
        &self.entries[ordinal]
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finds `name` the way extracting the archive and then opening the
    /// name would: symlinks on the way (the last component too) are
    /// followed, absolute targets start again at the archive's root and
    /// `..` stops there; a hard link stands for its target.
    pub fn resolve(&self, name: &str) -> Resolved {
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = name.split('/').rev().map(String::from).collect();
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            match part.as_str() {
                "" | "." => {}
                ".." => {
                    done.pop();
                }
                p => {
                    let mut candidate = done.join("/");
                    if !candidate.is_empty() {
                        candidate.push('/');
                    }
                    candidate.push_str(p);
                    let kind = self.names.get(&candidate).map(|&i| &self.entries[i].kind);
                    let (target, from_root) = match kind {
                        Some(Kind::Symlink(t)) => (t, false),
                        Some(Kind::Hardlink(t)) => (t, true),
                        _ => {
                            done.push(p.to_string());
                            continue;
                        }
                    };
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Resolved::Loop;
                    }
                    let Some(target) = target.as_deref().filter(|t| !t.is_empty()) else {
                        return Resolved::Missing;
                    };
                    if from_root || target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(target.split('/').rev().map(String::from));
                }
            }
        }
        match self.names.get(&done.join("/")) {
            Some(&i) if self.entries[i].kind == Kind::File => Resolved::File(i),
            Some(_) => Resolved::NotFile,
            None => Resolved::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        let n = name.as_bytes();
        h.as_old_mut().name[..n.len()].copy_from_slice(n);
        h.set_cksum();
        h
    }

    fn walk(data: &[u8]) -> Result<Vec<Entry>, ScanError> {
        let mut w = Walker::new(StreamInput(data), u64::MAX);
        let mut out = Vec::new();
        while let Some(e) = w.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn names_sizes_offsets_and_long_names() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("dir/{}/file", "x".repeat(300));
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "./a/b.json", &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "a/b.json").unwrap();
        let data = b.into_inner().unwrap();
        let entries = walk(&data).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].name.as_deref(), Some("a/b.json"));
        assert_eq!(entries[0].size, 5);
        let off = entries[0].offset as usize;
        assert_eq!(&data[off..off + 5], b"hello");
        assert_eq!(entries[1].name.as_deref(), Some(long.as_str()));
        let off = entries[1].offset as usize;
        assert_eq!(&data[off..off + 3], b"abc");
        assert_eq!(entries[2].kind, Kind::Symlink(Some("a/b.json".into())));

        let mut w = Walker::new(StreamInput(&data[..]), u64::MAX);
        w.next_entry().unwrap();
        let mut s = String::new();
        w.data().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert_eq!(w.next_entry().unwrap().unwrap().size, 3);
    }

    #[test]
    fn junk_damage_and_hostile_names() {
        assert!(matches!(walk(b"not a tar"), Err(ScanError::NotTar)));
        let mut elf = vec![0x7fu8, b'E', b'L', b'F'];
        elf.resize(4096, 0xaa);
        assert!(matches!(walk(&elf), Err(ScanError::NotTar)));
        assert!(walk(&[]).unwrap().is_empty());

        let mut one = header("f", EntryType::Regular, 1000).as_bytes().to_vec();
        one.extend([7u8; 1024]);
        let mut two = one.clone();
        two.extend(header("g", EntryType::Regular, 0).as_bytes());
        assert_eq!(walk(&two).unwrap().len(), 2);
        // Cut in the data, damaged second header.
        assert!(matches!(walk(&one[..900]), Err(ScanError::Truncated)));
        let mut bad = two.clone();
        bad[1024 + 512 + 3] ^= 1;
        assert!(matches!(walk(&bad), Err(ScanError::Corrupt { .. })));

        let evil = header("a/../../x", EntryType::Regular, 0);
        assert!(matches!(
            walk(evil.as_bytes()),
            Err(ScanError::Escape(n)) if n == "a/../../x"
        ));
    }

    #[test]
    fn oversized_records_and_the_limit_are_refused_from_headers() {
        // A long-name record claiming 1 GiB is refused before it is read.
        let h = header("././@LongLink", EntryType::GNULongName, 1 << 30);
        assert!(matches!(walk(h.as_bytes()), Err(ScanError::Corrupt { .. })));
        let h = header("big", EntryType::Regular, 1 << 40);
        let mut w = Walker::new(StreamInput(&h.as_bytes()[..]), 1 << 30);
        assert!(matches!(
            w.next_entry(),
            Err(ScanError::TooLarge { limit }) if limit == 1 << 30
        ));
    }

    #[test]
    fn links_resolve_inside_the_archive() {
        let mut c = Catalog::default();
        let mut add = |name: &str, kind: Kind| {
            let ordinal = c.entries.len();
            c.add(Entry {
                ordinal,
                name: Some(name.into()),
                kind,
                size: 0,
                offset: 0,
            })
        };
        add("l1", Kind::Dir).unwrap();
        add("l1/layer.tar", Kind::File).unwrap();
        add("l2", Kind::Dir).unwrap();
        add(
            "l2/layer.tar",
            Kind::Symlink(Some("../l1/layer.tar".into())),
        )
        .unwrap();
        add("abs", Kind::Symlink(Some("/l1".into()))).unwrap();
        add("hard", Kind::Hardlink(Some("l2/layer.tar".into()))).unwrap();
        add("out", Kind::Symlink(Some("/etc/passwd".into()))).unwrap();
        add("loop", Kind::Symlink(Some("loop".into()))).unwrap();
        add("l1", Kind::Dir).unwrap();
        assert!(matches!(
            add("l1/layer.tar", Kind::File),
            Err(ScanError::Duplicate(_))
        ));
        assert_eq!(c.resolve("l1/layer.tar"), Resolved::File(1));
        assert_eq!(c.resolve("l2/layer.tar"), Resolved::File(1));
        assert_eq!(c.resolve("abs/layer.tar"), Resolved::File(1));
        assert_eq!(c.resolve("hard"), Resolved::File(1));
        assert_eq!(c.resolve("../../l1/layer.tar"), Resolved::File(1));
        assert_eq!(c.resolve("out"), Resolved::Missing);
        assert_eq!(c.resolve("loop"), Resolved::Loop);
        assert_eq!(c.resolve("l1"), Resolved::NotFile);
    }
}
