//! Stream stages between a source and the repository: checksum, compression (and,
//! later, encryption). Stages are plain `Read`/`Write` adapters run on blocking threads,
//! so memory stays bounded by their buffers whatever the file size.

pub mod compress;
pub mod hash;

pub use compress::Compression;
pub use hash::{Checksum, CountingWriter, HashingReader, HashingWriter};
