//! Compression codecs. Each stored file or extent is one self-contained frame, so any of
//! them can be read on its own with a ranged read.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Zstd,
    Lz4,
    Gzip,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub codec: Codec,
    pub level: i32,
}

impl Codec {
    pub fn default_level(self) -> i32 {
        match self {
            Codec::Zstd => 3,
            Codec::Gzip => 6,
            Codec::Lz4 | Codec::None => 0,
        }
    }

    /// File name extension of stored files, empty for `none`.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Zstd => ".zst",
            Codec::Lz4 => ".lz4",
            Codec::Gzip => ".gz",
            Codec::None => "",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Codec> {
        [Codec::Zstd, Codec::Lz4, Codec::Gzip, Codec::None]
            .into_iter()
            .find(|c| c.extension() == ext)
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "zstd" | "zst" => Ok(Codec::Zstd),
            "lz4" => Ok(Codec::Lz4),
            "gzip" | "gz" => Ok(Codec::Gzip),
            "none" => Ok(Codec::None),
            _ => Err(format!(
                "unknown compression {s:?}: choose zstd, lz4, gzip or none"
            )),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        })
    }
}

impl Compression {
    /// A level only matters to zstd and gzip; lz4 and none ignore it (a level set for
    /// the usual codec in a configuration file must not break a one-off `--compress lz4`).
    pub fn new(codec: Codec, level: Option<i32>) -> Result<Compression, String> {
        let level = match codec {
            Codec::Lz4 | Codec::None => 0,
            _ => level.unwrap_or(codec.default_level()),
        };
        let ok = match codec {
            Codec::Zstd => (1..=22).contains(&level),
            Codec::Gzip => (0..=9).contains(&level),
            Codec::Lz4 | Codec::None => true,
        };
        if !ok {
            return Err(format!(
                "compression level {level} is not valid for {codec} (zstd: 1-22, gzip: 0-9)"
            ));
        }
        Ok(Compression { codec, level })
    }

    /// Wraps `out` in an encoder; call `Encoder::finish` to end the frame.
    pub fn encoder<W: Write>(self, out: W) -> io::Result<Encoder<W>> {
        Ok(match self.codec {
            Codec::Zstd => {
                let mut enc = zstd::Encoder::new(out, self.level)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
            // lz4 looks back 64 KiB at most, so bigger blocks barely help the ratio,
            // while the decoder of every frame allocates and clears two blocks: with the
            // default (4 MiB for writes over 256 KiB) that clearing was 6% of a chain
            // restore's instructions.
            Codec::Lz4 => Encoder::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(
                lz4_flex::frame::FrameInfo::new().block_size(lz4_flex::frame::BlockSize::Max256KB),
                out,
            )),
            Codec::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(self.level as u32),
            )),
            Codec::None => Encoder::None(out),
        })
    }
}

impl Codec {
    pub fn decoder<'a, R: Read + 'a>(self, input: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Codec::Zstd => Box::new(zstd::Decoder::new(input)?),
            Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
            Codec::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
            Codec::None => Box::new(input),
        })
    }
}

pub enum Encoder<W: Write> {
    Zstd(zstd::Encoder<'static, W>),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Lz4(e) => e.finish().map_err(io::Error::other),
            Encoder::Gzip(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Lz4(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_frames_concatenate() {
        for codec in [Codec::Zstd, Codec::Lz4, Codec::Gzip, Codec::None] {
            let c = Compression::new(codec, None).unwrap();
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            let mut enc = c.encoder(&mut out).unwrap();
            enc.write_all(&data).unwrap();
            enc.finish().unwrap();
            let mut back = Vec::new();
            codec
                .decoder(&out[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{codec}");
        }
    }

    #[test]
    fn invalid_levels_are_refused() {
        assert!(Compression::new(Codec::Zstd, Some(30)).is_err());
        assert_eq!(Compression::new(Codec::Lz4, Some(3)).unwrap().level, 0);
        assert!(Compression::new(Codec::Gzip, Some(10)).is_err());
        assert!("brotli".parse::<Codec>().is_err());
    }
}
