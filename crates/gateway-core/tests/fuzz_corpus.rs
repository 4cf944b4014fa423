//! Replays every input of the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! entry points, so seeds and anything fuzzing found stay fixed on stable, in the ordinary suite.

use std::path::Path;

/// A fuzz target's entry point.
type Target = fn(&[u8]);

fn replay(target: &str, run: Target) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n >= 5, "{target}: only {n} inputs in {}", dir.display());
}

#[test]
fn token_corpus() {
    replay("token", gateway_core::fuzzing::token);
}

#[test]
fn path_corpus() {
    replay("path", gateway_core::fuzzing::path);
}

#[test]
fn headers_corpus() {
    replay("headers", gateway_core::fuzzing::headers);
}

/// A few thousand mutations of each corpus (bytes flipped, inserted, removed, spliced), from a
/// fixed seed: not coverage-guided like cargo-fuzz, but it runs on stable in every test run.
#[test]
fn mutated_corpora_keep_every_invariant() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_128);
    let targets: [(&str, Target); 3] = [
        ("token", gateway_core::fuzzing::token),
        ("path", gateway_core::fuzzing::path),
        ("headers", gateway_core::fuzzing::headers),
    ];
    let alphabet = b"/.%2eEfF5c\\0:,\n -abcXYZ=_";
    for (target, run) in targets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("corpus")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
            .collect();
        for _ in 0..4_000 {
            let mut data = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=data.len());
                match rng.random_range(0..4) {
                    0 if at < data.len() => {
                        data[at] = alphabet[rng.random_range(0..alphabet.len())]
                    }
                    1 => data.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    2 if at < data.len() => {
                        data.remove(at);
                    }
                    _ => {
                        let other = &seeds[rng.random_range(0..seeds.len())];
                        let from = rng.random_range(0..=other.len());
                        data.splice(at..at, other[from..].iter().copied());
                    }
                }
            }
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {:?} breaks an invariant",
                String::from_utf8_lossy(&data)
            );
        }
    }
}
