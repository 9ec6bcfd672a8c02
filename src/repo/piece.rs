//! How backup cuts large files: a file over `piece_size()` bytes is stored as pieces of
//! that size, each one frame that any worker may copy, and restore writes such a file in
//! the same parts. Pieces are the unit of parallelism on both sides, so the two must agree.

/// Alignment of pieces: the backup's read buffer, so that page-level reads of a piece
/// stay whole buffers.
pub const PIECE_ALIGN: u64 = 1 << 20;

/// Files larger than this are copied in pieces of this size. Integration tests make it
/// small with `PGWARD_TEST_PIECE_BYTES` (a multiple of `PIECE_ALIGN`), so that their
/// small clusters have files in pieces.
pub fn piece_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var("PGWARD_TEST_PIECE_BYTES")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n > 0 && n % PIECE_ALIGN == 0)
            .unwrap_or(64 << 20)
    })
}
