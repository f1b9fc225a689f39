//! The fuzz targets of `apgate::fuzzing` in the suite: each over its checked-in corpus
//! (`fuzz/corpus/<target>/`, where every crash found becomes a file), then a short pass of
//! inputs mutated from it (`APGATE_FUZZ_SECONDS` per target, default 3). libFuzzer runs the same
//! targets for longer: `fuzz/README.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apgate::fuzzing::TARGETS;

/// xorshift64*: the same inputs for the same seed, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [&[u8]; 8] = [
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0xff, 0xff, 0xff, 0xff],
    &[0x00, 0x00, 0x00, 0x00],
    &[0x40, 0x00, 0x00, 0x00],
    &[0x00, 0x04, 0x00, 0x01],
];

/// One to four changes to `input`: bit flips, random or boundary bytes, insertions, deletions,
/// repeats, truncation, and splices from another corpus entry.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], max: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let word = INTERESTING[rng.below(INTERESTING.len())];
                let end = (at + word.len()).min(v.len());
                v.splice(at..end, word.iter().copied());
            }
            3 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            4 if !v.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                v.drain(at.min(end)..end);
            }
            5 if !v.is_empty() => {
                let from = rng.below(v.len());
                let end = (from + 1 + rng.below(64)).min(v.len());
                let piece = v[from..end].to_vec();
                for _ in 0..1 + rng.below(8) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            6 => v.truncate(at),
            _ => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
        }
        v.truncate(max);
    }
    v
}

fn corpus_of(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p, bytes)
        })
        .collect()
}

/// Runs `f` on `input`; a panic is reported with the input, written where it can be added to
/// the corpus.
fn run_one(target: &str, f: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let out = std::env::temp_dir().join(format!("apgate-fuzz-crash-{target}"));
        let _ = std::fs::write(&out, input);
        panic!(
            "{target} failed on an input saved in {} (add it to fuzz/corpus/{target}/): {:02x?}",
            out.display(),
            &input[..input.len().min(256)]
        );
    }
}

#[test]
fn every_target_over_its_corpus_and_mutations() {
    let seconds: u64 = std::env::var("APGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    for (target, f) in TARGETS {
        let corpus = corpus_of(target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is empty");
        for (path, input) in &corpus {
            eprintln!("{target}: {}", path.display());
            run_one(target, f, input);
        }
        let inputs: Vec<Vec<u8>> = corpus.into_iter().map(|(_, b)| b).collect();
        let max = inputs.iter().map(Vec::len).max().unwrap_or(0) * 2 + 1024;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let base = &inputs[rng.below(inputs.len())];
            let input = mutate(&mut rng, base, &inputs, max);
            run_one(target, f, &input);
            runs += 1;
        }
        eprintln!(
            "{target}: {} corpus inputs, {runs} mutated inputs in {seconds} s",
            inputs.len()
        );
        assert!(runs > 0, "{target}: no mutated input ran");
    }
}
