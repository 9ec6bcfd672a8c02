//! A manifest's file list held packed: each entry encoded in a few dozen bytes of one
//! buffer (lengths and offsets as variable-length integers, backup and bundle names as
//! numbers into one table) rather than as a `FileEntry` with its own allocations. Parsed,
//! an entry of one extent took about 250 bytes; packed it takes about 90. Backup holds
//! two lists of every file of the cluster (its reference's and its own), so at 100,000
//! files that is the difference between about 50 MB and 18 MB.
//!
//! The list is the same JSON array as `Vec<FileEntry>` when stored: entries are packed
//! as they are parsed (never a `Vec<FileEntry>` of the whole list) and unpacked one at a
//! time as they are written. Every value round-trips exactly, so what is written is what
//! would have been written from the `Vec`.

use std::collections::HashMap;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Digest, Extent, FileEntry, Name};

/// File entries packed into buffers, in list order (see the module's comment).
#[derive(Clone, Debug, Default)]
pub struct PackedFiles {
    /// The entries, encoded back to back (in the order they were added), in chunks of
    /// `CHUNK` bytes (or one entry, when larger): a buffer grown by doubling left the
    /// room it moved out of to the allocator, resident, and copied itself each time.
    chunks: Vec<Vec<u8>>,
    /// Where each entry starts: its chunk (high 32 bits) and offset in it, in list order.
    starts: Vec<u64>,
    /// The entry being packed.
    scratch: Vec<u8>,
    /// The backup and bundle names the entries name, by number.
    names: Vec<Name>,
    numbers: HashMap<Name, u32>,
    /// The numbers of the last backup and bundle names packed: most entries name the
    /// same ones as the entry before (the same shared string, when parsed).
    recent: [Option<u32>; 2],
}

const CHUNK: usize = 256 << 10;

/// `checksum` is present.
const HAS_CHECKSUM: u8 = 1;
/// `checksum` is the checksum of the one extent's frame (a file stored whole): not
/// stored twice.
const CHECKSUM_IS_FRAMES: u8 = 2;

impl PackedFiles {
    pub fn new() -> PackedFiles {
        PackedFiles::default()
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Adds `file` at the end of the list.
    pub fn push(&mut self, file: &FileEntry) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.pack(file, &mut out);
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= out.len());
        if !fits {
            self.chunks.push(Vec::with_capacity(CHUNK.max(out.len())));
        }
        let chunk = self.chunks.len() - 1;
        let last = &mut self.chunks[chunk];
        self.starts.push(((chunk as u64) << 32) | last.len() as u64);
        last.extend_from_slice(&out);
        self.scratch = out;
    }

    fn pack(&mut self, file: &FileEntry, out: &mut Vec<u8>) {
        put_bytes(out, file.path.as_bytes());
        put(out, file.size);
        put(out, zigzag(file.mtime));
        put(out, u64::from(file.mode));
        let flags = match (&file.checksum, file.extents.as_slice()) {
            (None, _) => 0,
            (Some(sum), [only]) if *sum == only.frame_checksum => HAS_CHECKSUM | CHECKSUM_IS_FRAMES,
            (Some(_), _) => HAS_CHECKSUM,
        };
        out.push(flags);
        if flags == HAS_CHECKSUM {
            out.extend_from_slice(&file.checksum.expect("flagged").0);
        }
        put(out, file.extents.len() as u64);
        for e in &file.extents {
            let backup = self.number(&e.backup, 0);
            let bundle = self.number(&e.bundle, 1);
            for v in [
                e.offset,
                e.length,
                u64::from(backup),
                u64::from(bundle),
                e.bundle_offset,
                e.stored_length,
                e.frame_offset,
                e.frame_length,
            ] {
                put(out, v);
            }
            out.extend_from_slice(&e.frame_checksum.0);
        }
    }

    fn number(&mut self, name: &Name, recent: usize) -> u32 {
        if let Some(n) = self.recent[recent] {
            if std::sync::Arc::ptr_eq(&self.names[n as usize], name) {
                return n;
            }
        }
        let n = match self.numbers.get(name) {
            Some(n) => *n,
            None => {
                let n = self.names.len() as u32;
                self.names.push(name.clone());
                self.numbers.insert(name.clone(), n);
                n
            }
        };
        self.recent[recent] = Some(n);
        n
    }

    /// Entry `i`'s chunk and where in it the entry starts.
    fn entry(&self, i: usize) -> (&[u8], usize) {
        let start = self.starts[i];
        (&self.chunks[(start >> 32) as usize], start as u32 as usize)
    }

    /// The path of entry `i`, read in place.
    pub fn path(&self, i: usize) -> &str {
        let (b, mut at) = self.entry(i);
        let bytes = get_bytes(b, &mut at);
        // Packed from a `String`.
        std::str::from_utf8(bytes).expect("packed from a str")
    }

    /// The size of entry `i`, read in place.
    pub fn size(&self, i: usize) -> u64 {
        let (b, mut at) = self.entry(i);
        get_bytes(b, &mut at);
        get(b, &mut at)
    }

    /// Entry `i`, unpacked.
    pub fn get(&self, i: usize) -> FileEntry {
        let mut f = FileEntry::default();
        self.get_into(i, &mut f);
        f
    }

    /// Entry `i`, unpacked into `f` (reusing its path's and list's room: the whole list
    /// is unpacked three times when it is written).
    fn get_into(&self, i: usize, f: &mut FileEntry) {
        let (b, mut at) = self.entry(i);
        f.path.clear();
        f.path.push_str(self.path(i));
        get_bytes(b, &mut at);
        f.size = get(b, &mut at);
        f.mtime = unzigzag(get(b, &mut at));
        f.mode = get(b, &mut at) as u32;
        let flags = b[at];
        at += 1;
        f.checksum = None;
        if flags == HAS_CHECKSUM {
            f.checksum = Some(digest(b, &mut at));
        }
        let count = get(b, &mut at) as usize;
        let extents = &mut f.extents;
        extents.clear();
        for _ in 0..count {
            let mut v = [0u64; 8];
            for x in &mut v {
                *x = get(b, &mut at);
            }
            extents.push(Extent {
                offset: v[0],
                length: v[1],
                backup: self.names[v[2] as usize].clone(),
                bundle: self.names[v[3] as usize].clone(),
                bundle_offset: v[4],
                stored_length: v[5],
                frame_offset: v[6],
                frame_length: v[7],
                frame_checksum: digest(b, &mut at),
            });
        }
        if flags & CHECKSUM_IS_FRAMES != 0 {
            f.checksum = Some(extents[0].frame_checksum);
        }
    }

    /// The entries, unpacked one at a time, in list order.
    pub fn iter(&self) -> impl Iterator<Item = FileEntry> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Adds `other`'s entries at the end (unpacked and packed again: the two number
    /// their names apart).
    pub fn append(&mut self, other: &PackedFiles) {
        self.starts.reserve(other.len());
        let mut f = FileEntry::default();
        for i in 0..other.len() {
            other.get_into(i, &mut f);
            self.push(&f);
        }
    }

    /// Puts the list in path order (only the positions move, not the entries).
    pub fn sort_by_path(&mut self) {
        let sorted = (1..self.len()).all(|i| self.path(i - 1) < self.path(i));
        if !sorted {
            let mut order: Vec<u32> = (0..self.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| self.path(a as usize).cmp(self.path(b as usize)));
            self.starts = order.iter().map(|&i| self.starts[i as usize]).collect();
        }
    }

    /// The entry of `path`, in a list in path order (`sort_by_path`).
    pub fn find(&self, path: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.path(mid).cmp(path) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Gives back the room the buffers grew into beyond what they hold.
    pub fn shrink_to_fit(&mut self) {
        self.starts.shrink_to_fit();
        self.scratch = Vec::new();
    }
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn get_bytes<'a>(b: &'a [u8], at: &mut usize) -> &'a [u8] {
    let n = get(b, at) as usize;
    let s = &b[*at..*at + n];
    *at += n;
    s
}

fn digest(b: &[u8], at: &mut usize) -> Digest {
    let d = Digest(b[*at..*at + 32].try_into().expect("32 bytes"));
    *at += 32;
    d
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl Serialize for PackedFiles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        let mut f = FileEntry::default();
        for i in 0..self.len() {
            self.get_into(i, &mut f);
            seq.serialize_element(&f)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for PackedFiles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Packing;
        impl<'de> Visitor<'de> for Packing {
            type Value = PackedFiles;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of files")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PackedFiles, A::Error> {
                let mut files = PackedFiles::new();
                while let Some(mut f) = seq.next_element::<FileEntry>()? {
                    super::upgrade_extents(&mut f);
                    files.push(&f);
                }
                files.shrink_to_fit();
                Ok(files)
            }
        }
        d.deserialize_seq(Packing)
    }
}

impl super::FileList for PackedFiles {
    fn count(&self) -> usize {
        self.len()
    }

    /// Extents were upgraded as they were packed.
    fn upgraded(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, extents: usize, checksum: Option<Digest>) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 8192 * extents as u64,
            mtime: -5,
            mode: 0o600,
            checksum,
            extents: (0..extents)
                .map(|i| Extent {
                    offset: 8192 * i as u64,
                    length: 8192,
                    backup: format!("B{}", i % 2).into(),
                    bundle: format!("b{i}").into(),
                    bundle_offset: u64::MAX - i as u64,
                    stored_length: 300,
                    frame_offset: i as u64,
                    frame_length: 1 << 40,
                    frame_checksum: Digest([i as u8; 32]),
                })
                .collect(),
        }
    }

    #[test]
    fn entries_unpack_as_they_were_packed_and_store_as_the_list_would() {
        let files = vec![
            entry("base/1/2", 1, Some(Digest([0; 32]))),
            entry("a", 1, Some(Digest([9; 32]))),
            entry("global/pg_control", 0, None),
            entry("é/x", 3, Some(Digest([4; 32]))),
            entry("base/1/3", 2, None),
        ];
        let mut packed = PackedFiles::new();
        for f in &files {
            packed.push(f);
        }
        let json = serde_json::to_string(&files).unwrap();
        assert_eq!(serde_json::to_string(&packed).unwrap(), json);
        let parsed: PackedFiles = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);

        let mut sorted = parsed.clone();
        sorted.sort_by_path();
        let paths: Vec<&str> = (0..sorted.len()).map(|i| sorted.path(i)).collect();
        assert_eq!(
            paths,
            ["a", "base/1/2", "base/1/3", "global/pg_control", "é/x"]
        );
        let at = sorted.find("base/1/3").unwrap();
        assert_eq!(sorted.size(at), 8192 * 2);
        assert_eq!(
            serde_json::to_value(sorted.get(at)).unwrap(),
            serde_json::to_value(&files[4]).unwrap()
        );
        assert_eq!(sorted.find("base/1"), None);
        assert_eq!(sorted.find("zz"), None);

        let mut both = PackedFiles::new();
        both.append(&sorted);
        both.append(&parsed);
        assert_eq!(both.len(), 10);
        assert_eq!(
            serde_json::to_value(both.get(9)).unwrap(),
            serde_json::to_value(&files[4]).unwrap()
        );
    }

    #[test]
    fn a_stored_manifest_read_packed_is_written_back_as_read_whole() {
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format-v1/manifest.json"
        ));
        let whole = super::super::parse_manifest(bytes).unwrap();
        let packed = super::super::parse_manifest_as::<PackedFiles>(bytes).unwrap();
        assert_eq!(packed.files.len(), whole.files.len());
        assert_eq!(
            serde_json::to_string(&packed).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
    }

    #[test]
    fn format_1_extents_are_upgraded_as_they_are_packed() {
        let json = r#"[{"path": "f", "size": 5, "mtime": 1, "mode": 384, "checksum": null,
            "extents": [{"offset": 0, "length": 5, "backup": "B", "bundle": "b",
            "bundle_offset": 0, "stored_length": 9,
            "checksum": "0000000000000000000000000000000000000000000000000000000000000000"}]}]"#;
        let parsed: PackedFiles = serde_json::from_str(json).unwrap();
        let e = &parsed.get(0).extents[0];
        assert_eq!((e.frame_offset, e.frame_length), (0, 5));
    }
}
