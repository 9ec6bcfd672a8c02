//! Data pages: the header fields a backup needs (`PageHeaderData` in
//! `src/include/storage/bufpage.h`) and the data checksum (`src/include/storage/checksum_impl.h`).
//!
//! Pages are read as little-endian, like the server writes them on x86-64 and arm64. Every
//! function accepts any slice without panicking: bytes missing from a short slice count as zero,
//! bytes past `BLCKSZ` are ignored.

use super::lsn::Lsn;

pub const BLCKSZ: usize = 8192;
/// `RELSEG_SIZE`: relation files are split into 1 GiB segments of 8 KiB pages.
pub const RELSEG_SIZE_BLOCKS: u32 = 131072;

/// `pd_checksum` sits at bytes 8..10 of the page header.
const PD_CHECKSUM_OFFSET: usize = 8;
/// `pd_upper` at bytes 14..16; zero means `PageIsNew` (never initialized).
const PD_UPPER_OFFSET: usize = 14;

fn u16_at(page: &[u8], off: usize) -> u16 {
    match page.get(off..off + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn u32_at(page: &[u8], off: usize) -> u32 {
    match page.get(off..off + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// `pd_lsn`: two u32 halves, `xlogid` (high) then `xrecoff` (low), not one u64.
pub fn page_lsn(page: &[u8]) -> Lsn {
    Lsn(((u32_at(page, 0) as u64) << 32) | u32_at(page, 4) as u64)
}

pub fn page_checksum_field(page: &[u8]) -> u16 {
    u16_at(page, PD_CHECKSUM_OFFSET)
}

/// `pd_upper == 0`: PostgreSQL's `PageIsNew`.
pub fn page_is_new(page: &[u8]) -> bool {
    u16_at(page, PD_UPPER_OFFSET) == 0
}

pub fn is_all_zero(page: &[u8]) -> bool {
    // Word-wise compare; the compiler vectorizes this.
    let mut words = page.chunks_exact(8);
    let tail_zero = words.remainder().iter().all(|&b| b == 0);
    tail_zero && words.all(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])) == 0)
}

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16777619;
/// `checksumBaseOffsets`: the initial value of each of the 32 parallel hashes.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// `CHECKSUM_COMP`: FNV-1a on 32-bit words, plus a shift to mix high bits into low ones.
#[inline(always)]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// `pg_checksum_block`: the page as rows of 32 u32 lanes, each lane hashed separately,
/// then two rounds of zeros and an xor fold. `pd_checksum` (low half of word 2, little-endian)
/// is hashed as zero.
fn checksum_block(page: &[u8; BLCKSZ]) -> u32 {
    // The 32 lanes are made for SIMD; the x86-64 baseline (SSE2) lacks a 32-bit lane
    // multiply, so the same code compiled for AVX2 runs 2.3x faster where the CPU has it
    // (measured: 40 ms against 92 ms for 1.6 GB of pages).
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { checksum_block_avx2(page) };
    }
    checksum_block_lanes(page)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn checksum_block_avx2(page: &[u8; BLCKSZ]) -> u32 {
    checksum_block_lanes(page)
}

#[inline(always)]
fn checksum_block_lanes(page: &[u8; BLCKSZ]) -> u32 {
    let mut sums = BASE_OFFSETS;
    for (i, row) in page.chunks_exact(N_SUMS * 4).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (w, b) in words.iter_mut().zip(row.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if i == 0 {
            words[PD_CHECKSUM_OFFSET / 4] &= 0xFFFF_0000;
        }
        for (s, w) in sums.iter_mut().zip(words) {
            *s = comp(*s, w);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = comp(*s, 0);
        }
    }
    sums.iter().fold(0, |acc, s| acc ^ s)
}

/// `pg_checksum_page`: the block checksum mixed with the block number (so a page written at
/// the wrong place fails), reduced to 1..=65535. `blkno` counts from the start of the relation
/// fork, not of the 1 GiB segment file.
pub fn pg_checksum_page(page: &[u8], blkno: u32) -> u16 {
    let checksum = match <&[u8; BLCKSZ]>::try_from(page.get(..BLCKSZ).unwrap_or(&[])) {
        Ok(full) => checksum_block(full),
        Err(_) => {
            // Short input: zero-pad on the stack rather than allocate.
            let mut buf = [0u8; BLCKSZ];
            buf[..page.len()].copy_from_slice(page);
            checksum_block(&buf)
        }
    };
    ((checksum ^ blkno) % 65535 + 1) as u16
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageVerdict {
    Valid,
    /// Never-written space (relation extension): valid, carries no checksum.
    AllZero,
    /// `pd_lsn >= backup start`: the page may be torn by a concurrent write; WAL replay from
    /// the backup's start restores it (full-page images), so it is not checked.
    NewerThan,
    ChecksumMismatch {
        stored: u16,
        computed: u16,
    },
}

/// Verifies one page of a checksummed cluster the way a base backup should.
///
/// Order matters: all-zero pages first (valid, no checksum), then pages changed since the
/// backup started (possibly torn, repaired by WAL), then the checksum. Unlike basebackup.c we
/// do not skip `PageIsNew` pages (`pd_upper == 0`) that are not all zero: PostgreSQL's own
/// `PageIsVerified` rejects those, and skipping them would let a zeroed header hide corruption.
/// Pass exactly `BLCKSZ` bytes: a partial trailing block (file being extended) should be copied
/// without verification, as basebackup.c does; here it is checked as if zero-padded.
pub fn verify_page(page: &[u8], blkno: u32, backup_start: Lsn) -> PageVerdict {
    if is_all_zero(page) {
        return PageVerdict::AllZero;
    }
    if page_lsn(page) >= backup_start {
        return PageVerdict::NewerThan;
    }
    let stored = page_checksum_field(page);
    let computed = pg_checksum_page(page, blkno);
    if stored == computed {
        PageVerdict::Valid
    } else {
        PageVerdict::ChecksumMismatch { stored, computed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simd_build_of_the_block_checksum_agrees_with_the_portable_one() {
        let mut page = [0u8; BLCKSZ];
        let mut x = 0x9E37_79B9u32;
        for round in 0..64 {
            for b in page.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = (x >> (round % 24)) as u8;
            }
            assert_eq!(checksum_block(&page), checksum_block_lanes(&page));
        }
    }

    /// First three pages of base/5/16384 (heap of `t`) from the checksummed PG 15 fixture
    /// cluster, copied after a clean shutdown.
    const HEAP: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pg15/heap-16384-first3.bin"
    ));

    fn pages() -> impl Iterator<Item = (u32, &'static [u8])> {
        HEAP.chunks_exact(BLCKSZ)
            .enumerate()
            .map(|(i, p)| (i as u32, p))
    }

    #[test]
    fn real_pages_verify() {
        assert_eq!(HEAP.len(), 3 * BLCKSZ);
        for (blkno, page) in pages() {
            assert!(!page_is_new(page));
            assert_ne!(page_lsn(page), Lsn(0));
            assert_eq!(
                pg_checksum_page(page, blkno),
                page_checksum_field(page),
                "block {blkno}"
            );
            assert_eq!(verify_page(page, blkno, Lsn(u64::MAX)), PageVerdict::Valid);
        }
    }

    #[test]
    fn header_fields_of_a_real_page() {
        let page = &HEAP[..BLCKSZ];
        // The heap was created and filled in WAL segment 1, before the backup at 0/2000028.
        assert!(page_lsn(page) < "0/2000028".parse().unwrap());
        assert_eq!(verify_page(page, 0, page_lsn(page)), PageVerdict::NewerThan);
        assert_eq!(
            verify_page(page, 0, Lsn(page_lsn(page).0 + 1)),
            PageVerdict::Valid
        );
    }

    #[test]
    fn flipped_byte_or_wrong_block_number_is_a_mismatch() {
        let mut page = HEAP[..BLCKSZ].to_vec();
        let stored = page_checksum_field(&page);
        assert!(matches!(
            verify_page(&page, 1, Lsn(u64::MAX)),
            PageVerdict::ChecksumMismatch { .. }
        ));
        page[5000] ^= 0x10;
        assert!(matches!(
            verify_page(&page, 0, Lsn(u64::MAX)),
            PageVerdict::ChecksumMismatch { stored: s, computed: c } if s == stored && c != stored
        ));
        // The checksum field itself is excluded from the hash.
        let mut page = HEAP[..BLCKSZ].to_vec();
        page[8] ^= 0xFF;
        assert_eq!(pg_checksum_page(&page, 0), stored);
    }

    #[test]
    fn zero_new_and_short_pages() {
        let zero = [0u8; BLCKSZ];
        assert!(is_all_zero(&zero) && page_is_new(&zero));
        assert_eq!(verify_page(&zero, 7, Lsn(0)), PageVerdict::AllZero);
        // A non-zero page claiming to be new is checked, not waved through.
        let mut page = HEAP[..BLCKSZ].to_vec();
        page[14] = 0;
        page[15] = 0;
        assert!(page_is_new(&page));
        assert!(matches!(
            verify_page(&page, 0, Lsn(u64::MAX)),
            PageVerdict::ChecksumMismatch { .. }
        ));
        // Short input never panics.
        for len in [0, 3, 9, 24, 4097] {
            let p = &HEAP[..len];
            let _ = (
                page_lsn(p),
                page_checksum_field(p),
                pg_checksum_page(p, 0),
                verify_page(p, 0, Lsn(1)),
            );
        }
        assert!(is_all_zero(&[]));
        assert!(!is_all_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
