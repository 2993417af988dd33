//! Fuzzing on stable Rust, bounded in time, as part of the test suite (cargo-fuzz needs a
//! nightly compiler; this is its equivalent for CI). Every reader of outside input is fed
//! mutations of real files: HostFactory's captured inputs (the conformance corpus), IBM's
//! own config and template files, ORB's files, the seeds' YAML and JSON configs, the
//! shipped `hfwasm.json` and inventories. A reader must answer every input with a value or
//! a named error: no panic, and no input may take longer than [`SLOW`].
//!
//! Each target runs for `HFWASM_FUZZ_SECS` seconds (default 4); the seed is printed and
//! `HFWASM_FUZZ_SEED` replays a run. An input that breaks a reader is written to the
//! temp dir and named in the failure, to be added to the corpus once fixed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Rng, repo};
use hfwasm::capabilities::inventory::Inventory;
use hfwasm::config::Config;
use hfwasm::hf::Call;
use hfwasm::hf::input;

/// The longest one input may take to read: far above a normal read (microseconds), far
/// below a hang.
const SLOW: Duration = Duration::from_secs(2);

/// Tokens that break parsers more often than random bytes do.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "-1",
    "0",
    "1e308",
    "-9223372036854775809",
    "18446744073709551616",
    "NaN",
    "\\u0000",
    "\\ud800",
    "\u{0}",
    "\u{feff}",
    "\n",
    "\r\n",
    "\t",
    "'",
    "#",
    "- ",
    ": ",
    "&a",
    "*a",
    "!!binary",
    "---",
    "...",
    "%",
    "=",
    "\"\"",
    "[]",
    "{}",
    "..",
    "/",
    "../../etc/passwd",
    "/dev/zero",
    "${HOME}",
    "~",
    "\u{202e}",
    "é",
];

/// A number below `n`.
fn pick(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

/// One mutation of `input` (or a splice with `other`): what fuzzers do, in a few lines.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + pick(rng, 4) {
        let at = pick(rng, v.len() + 1);
        match pick(rng, 9) {
            0 if !v.is_empty() => {
                let i = pick(rng, v.len());
                v[i] ^= 1 << pick(rng, 8);
            }
            1 => v.insert(at, rng.next() as u8),
            2 if !v.is_empty() => {
                let end = (at + pick(rng, 16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 => {
                let t = TOKENS[pick(rng, TOKENS.len())].as_bytes();
                v.splice(at..at, t.iter().copied());
            }
            4 if !v.is_empty() => {
                // Duplicate a run (repeats keys, nests deeper).
                let start = pick(rng, v.len());
                let end = (start + 1 + pick(rng, 64)).min(v.len());
                let run = v[start..end].to_vec();
                v.splice(at..at, run);
            }
            5 if !other.is_empty() => {
                // Splice in part of another corpus file.
                let start = pick(rng, other.len());
                let end = (start + 1 + pick(rng, 256)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
            6 => {
                // Deep nesting.
                let depth = 1 + pick(rng, 5000);
                let open = if pick(rng, 2) == 0 { b'[' } else { b'{' };
                v.splice(at..at, std::iter::repeat_n(open, depth));
            }
            7 if !v.is_empty() => v.truncate(at),
            _ => {
                // A long string.
                let n = 1 + pick(rng, 100_000);
                v.splice(at..at, std::iter::repeat_n(b'a', n));
            }
        }
    }
    v
}

/// Files of `dir` (not recursive), read whole.
fn corpus(paths: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for p in paths {
        let path = repo().join(p);
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![path]
        };
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            out.push((f.display().to_string(), bytes));
        }
    }
    assert!(!out.is_empty(), "empty corpus {paths:?}");
    out
}

/// Runs `target` on the corpus as it is, then on mutations of it for the time budget.
/// Returns how many inputs it read.
fn fuzz(name: &str, seeds: Vec<(String, Vec<u8>)>, mut target: impl FnMut(&[u8])) -> usize {
    let secs: u64 = std::env::var("HFWASM_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let (mut rng, seed) = Rng::seeded("HFWASM_FUZZ_SEED");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    let mut run = |input: &[u8], n: &mut usize| {
        let t0 = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(input)));
        let took = t0.elapsed();
        *n += 1;
        if outcome.is_err() || took > SLOW {
            let keep = std::env::temp_dir().join(format!("hfwasm-fuzz-{name}-{seed}-{n}"));
            let _ = std::fs::write(&keep, input);
            panic!(
                "{name}: input {n} (seed {seed}, HFWASM_FUZZ_SEED={seed} replays) {} after {took:?}; kept in {}",
                if outcome.is_err() { "panicked" } else { "was too slow" },
                keep.display()
            );
        }
    };
    for (_, bytes) in &seeds {
        run(bytes, &mut n);
    }
    while Instant::now() < deadline {
        let a = &seeds[pick(&mut rng, seeds.len())].1;
        let b = &seeds[pick(&mut rng, seeds.len())].1;
        let input = mutate(&mut rng, a, b);
        run(&input, &mut n);
    }
    println!("fuzz {name}: {n} inputs, 0 crashes, 0 hangs (seed {seed}, {secs} s)");
    n
}

#[test]
fn hostfactory_input_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("input.json");
    let seeds = corpus(&["tests/conformance/inputs", "tests/conformance/inputs/aliases"]);
    fuzz("hostfactory-input", seeds, |bytes| {
        std::fs::write(&file, bytes).expect("write");
        for call in [
            Call::GetAvailableTemplates,
            Call::RequestMachines,
            Call::RequestReturnMachines,
            Call::GetRequestStatus,
            Call::GetReturnRequests,
        ] {
            let Ok(obj) = input::read_object(call, &file) else {
                continue;
            };
            match call {
                Call::RequestMachines => drop(input::request_machines(&obj)),
                Call::RequestReturnMachines => drop(input::request_return_machines(&obj)),
                Call::GetRequestStatus => drop(input::get_request_status(&obj)),
                Call::GetReturnRequests => drop(input::get_return_requests(&obj)),
                Call::GetAvailableTemplates => {}
            }
        }
    });
}

#[test]
fn inventory_reader() {
    let seeds = corpus(&["config/inventory.txt", "examples/hostfactory-conf/providers/pool/inventory.txt"]);
    let path = Path::new("inventory.txt");
    fuzz("inventory", seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Err(e) = Inventory::parse(path, &text) {
            // The error names the file and quotes nothing the reader did not take as its own.
            assert!(e.to_string().contains("inventory.txt"), "{e}");
        }
    });
}

/// A conf dir holding `files`, loaded as HostFactory's provider instance `inst` would be.
fn load_conf(dir: &Path, files: &[(&str, &[u8])]) {
    let conf = dir.join("conf");
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&conf);
    std::fs::create_dir_all(&conf).expect("conf");
    for (name, bytes) in files {
        std::fs::write(conf.join(name), bytes).expect("write");
    }
    if let Err(e) = Config::load(&conf, &work, "inst") {
        // Every refusal names the file it is about.
        let text = e.to_string();
        assert!(!text.is_empty());
    }
}

#[test]
fn ibm_config_and_templates_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let configs = corpus(&[
        "tests/data/ibm/aws/awsprov_config.json",
        "tests/data/ibm/awsv2/awsprov_config.json",
        "tests/data/ibm/symphony-doc/awsinstprov_config.json",
    ]);
    let templates = corpus(&[
        "tests/data/ibm/aws/awsprov_templates.json",
        "tests/data/ibm/awsv2/awsprov_templates.json",
    ]);
    let good_config = configs[0].1.clone();
    let good_templates = templates[0].1.clone();
    let mut all = configs.clone();
    all.extend(templates.clone());
    // Each input is used once as the config (with good templates) and once as the templates
    // (with a good config), so mutations reach both readers past the other's checks.
    fuzz("ibm-aws", all, |bytes| {
        load_conf(
            dir.path(),
            &[("instprov_config.json", bytes), ("instprov_templates.json", &good_templates)],
        );
        load_conf(
            dir.path(),
            &[("instprov_config.json", &good_config), ("instprov_templates.json", bytes)],
        );
    });
}

#[test]
fn hfwasm_seed_and_orb_config_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = corpus(&["config/hfwasm.json", "tests/data/orb/config.json", "tests/data/seeds"]);
    let orb_templates = corpus(&["tests/data/orb/aws_templates.json"]).remove(0).1;
    fuzz("config", json, |bytes| {
        load_conf(dir.path(), &[("hfwasm.json", bytes)]);
        load_conf(dir.path(), &[("config.yml", bytes)]);
        load_conf(dir.path(), &[("config.json", bytes), ("aws_templates.json", &orb_templates)]);
    });
}

/// The harness itself: a reader that panics on some input is caught and named.
#[test]
#[should_panic(expected = "panicked")]
fn the_harness_reports_a_reader_that_panics() {
    fuzz("self-check", vec![("seed".into(), b"{}".to_vec())], |bytes| {
        assert!(bytes.len() < 4, "a reader that cannot take longer input");
    });
}
