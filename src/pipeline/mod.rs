//! Stream stages between a source and the repository: checksum, compression and
//! encryption (`seal`/`unseal` below put the encryption stage in or leave it out). Stages are plain `Read`/`Write` adapters run on blocking threads,
//! so memory stays bounded by their buffers whatever the file size.

pub mod compress;
pub mod encrypt;
pub mod hash;

pub use compress::Compression;
pub use hash::{Checksum, CountingWriter, HashingReader, HashingWriter};

use std::io::{self, Read, Write};

use encrypt::{DecryptReader, EncryptWriter, MasterKey};

/// The encryption stage of a stored object: a pass-through without a key.
pub enum Sealed<W: Write> {
    Plain(W),
    Encrypted(Box<EncryptWriter<W>>),
}

pub fn seal<W: Write>(key: Option<&MasterKey>, out: W) -> io::Result<Sealed<W>> {
    Ok(match key {
        Some(key) => Sealed::Encrypted(Box::new(EncryptWriter::new(key, out)?)),
        None => Sealed::Plain(out),
    })
}

impl<W: Write> Sealed<W> {
    /// Ends the object (the encrypted form's final, authenticated chunk).
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Encrypted(e) => (*e).finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Encrypted(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Encrypted(e) => e.flush(),
        }
    }
}

/// Reading side of `seal`: authenticates each chunk before releasing it.
pub fn unseal<'a, R: Read + 'a>(
    key: Option<&MasterKey>,
    input: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match key {
        Some(key) => Box::new(DecryptReader::new(key, input)?),
        None => Box::new(input),
    })
}
