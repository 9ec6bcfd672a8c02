//! Every parser of bytes that come from outside (the data directory, the server, the
//! repository) answers arbitrary, mutated and truncated input with a value or an error,
//! never a panic: a panic in `archive-get` or `restore` would end the process with a code
//! PostgreSQL misreads. Deterministic mutations of real fixtures (the seeds below), so a
//! failure names its input and reproduces; the default run takes a few seconds, the
//! second tier runs fifty times more.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::pg;
use crate::pipeline::encrypt::{DecryptReader, EncryptWriter, KdfParams, KeyFile, MasterKey};
use crate::repo::archive::parse_stored_name;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pg15");

use crate::test_rng::Rng;

/// Bytes that parsers treat specially: separators, digits and hex, line ends, and the
/// start of multi-byte UTF-8 characters (slicing a `str` inside one panics).
const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"/",
    b"-",
    b".",
    b"_",
    b":",
    b": ",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"#",
    b"0",
    b"1",
    b"9",
    b"A",
    b"F",
    b"a",
    b"f",
    b"G",
    b"(file ",
    b")",
    "é".as_bytes(),
    "€".as_bytes(),
    "𝄞".as_bytes(),
    b"\xc3",
    b"\xe2\x82",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"e9",
    b"-1",
    b"4294967296",
];

fn mutate(rng: &mut Rng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => v.truncate(at),
            3 => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 | 5 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, piece.iter().copied());
            }
            6 if !v.is_empty() => {
                // Overwrite with an interesting piece (keeps offsets of binary formats).
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                for (k, b) in piece.iter().enumerate() {
                    if let Some(slot) = v.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(64)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let extra: Vec<u8> = (0..rng.below(32)).map(|_| rng.next() as u8).collect();
                v.splice(at..at, extra);
            }
        }
    }
    v
}

/// Runs every parser on `input`; returns the name of the one that panicked.
fn parse_everything(input: &[u8], key: &MasterKey) -> Option<&'static str> {
    let text = String::from_utf8_lossy(input);
    let checks: [(&'static str, &dyn Fn()); 15] = [
        ("WalFileName::parse", &|| {
            let _ = pg::WalFileName::parse(&text);
        }),
        ("parse_long_page_header", &|| {
            let _ = pg::wal::page::parse_long_page_header(input);
        }),
        ("parse_control_file", &|| {
            let _ = pg::control::parse_control_file(input).map(|c| c.major_version());
        }),
        ("page header", &|| {
            let _ = (pg::page::page_lsn(input), pg::page::page_is_new(input));
            let _ = pg::page::page_checksum_field(input);
        }),
        ("verify_page", &|| {
            let _ = pg::page::verify_page(input, input.len() as u32, pg::Lsn(u64::MAX));
        }),
        ("parse_history", &|| {
            let _ = pg::history::parse_history(&text);
        }),
        ("parse_backup_label", &|| {
            let _ = pg::backup_label::parse_backup_label(&text);
        }),
        ("Lsn::from_str", &|| {
            let _ = text.parse::<pg::Lsn>();
        }),
        ("TimelineId::from_hex", &|| {
            let _ = pg::TimelineId::from_hex(&text);
        }),
        ("relation_file", &|| {
            let _ = pg::datadir::relation_file(&text);
            let _ = pg::datadir::init_fork_path(&text);
        }),
        ("skip_file", &|| {
            let _ = pg::datadir::skip_file(&text);
            let _ = pg::datadir::skip_dir_contents(&text);
        }),
        ("parse_stored_name", &|| {
            let _ = parse_stored_name(&text);
        }),
        ("KeyFile::from_json", &|| {
            let _ = KeyFile::from_json(input);
        }),
        ("DecryptReader", &|| {
            if let Ok(mut r) = DecryptReader::new(key, input) {
                let _ = r.read_to_end(&mut Vec::new());
            }
        }),
        ("stored name as text", &|| {
            // The listing hands names as `str`: valid UTF-8 only, no lossy repair.
            if let Ok(name) = std::str::from_utf8(input) {
                let _ = parse_stored_name(name);
                let _ = pg::WalFileName::parse(name);
            }
        }),
    ];
    checks
        .iter()
        .find(|(_, check)| catch_unwind(AssertUnwindSafe(check)).is_err())
        .map(|(name, _)| *name)
}

fn seeds(key: &MasterKey) -> Vec<Vec<u8>> {
    let fixture = |name: &str| std::fs::read(format!("{FIXTURES}/{name}")).expect(name);
    let cheap = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };
    let (key_file, _) = KeyFile::create_with(b"pw", cheap).expect("key file");
    let mut encrypted = EncryptWriter::new(key, Vec::new()).expect("encrypting");
    std::io::Write::write_all(&mut encrypted, &fixture("backup_label")).expect("encrypting");
    let sum = "0123456789abcdef".repeat(4);
    let mut seeds = vec![
        fixture("wal-first-page.bin")[..512].to_vec(),
        fixture("pg_control"),
        fixture("backup_label"),
        fixture("00000002.history"),
        fixture("0000000C.history"),
        fixture("heap-16384-first3.bin")[..pg::page::BLCKSZ].to_vec(),
        key_file.to_json(),
        encrypted.finish().expect("encrypting"),
        b"0/16B3748".to_vec(),
        b"0000000A.history".to_vec(),
        b"base/5/16384_vm.2".to_vec(),
        b"pg_tblspc/16385/PG_15_202209061/5/16386_init".to_vec(),
        b"global/pg_internal.init".to_vec(),
    ];
    for name in [
        "000000010000000000000004",
        "00000002000000010000000A.partial",
        "000000010000000000000002.00000028.backup",
        "0000000C.history",
    ] {
        seeds.push(name.as_bytes().to_vec());
        for ext in ["", ".zst", ".lz4", ".gz"] {
            seeds.push(format!("{name}-{sum}{ext}").into_bytes());
        }
    }
    seeds
}

fn run(rounds: usize, rng_seed: u64) {
    let (_, key) = KeyFile::create_with(
        b"pw",
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
    )
    .expect("key");
    let seeds = seeds(&key);
    let mut rng = Rng(rng_seed);
    // Stops after a few failures: each prints its panic message.
    let mut failures = Vec::new();
    let mut check = |input: Vec<u8>| {
        if failures.len() < 5 {
            if let Some(parser) = parse_everything(&input, &key) {
                failures.push(format!("{parser} panicked on {input:?}"));
            }
        }
    };
    for seed in &seeds {
        for cut in 0..seed.len().min(64) {
            check(seed[..cut].to_vec());
        }
        check(seed.clone());
    }
    for _ in 0..rounds {
        let seed = &seeds[rng.below(seeds.len())];
        check(mutate(&mut rng, seed, &seeds));
        let noise: Vec<u8> = (0..rng.below(96)).map(|_| rng.next() as u8).collect();
        check(noise);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parsers_never_panic_on_mutated_or_truncated_input() {
    run(6_000, 0x5EED_0001);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn parsers_never_panic_on_many_more_mutations() {
    for seed in 1..=5 {
        run(60_000, 0xC0FF_EE00 + seed);
    }
}
