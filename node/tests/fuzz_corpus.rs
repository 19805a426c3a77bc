//! Replays the kept fuzz corpus on stable: every file under
//! `fuzz/corpus/<target>/` goes through the same function its cargo-fuzz
//! target calls (`shoal_node::fuzzing`), so an input that once crashed a
//! decoder, or that reaches deep into one, is checked by every `cargo test`.
//!
//! ```text
//! cargo test -p shoal-node --test fuzz_corpus -- --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use shoal_node::fuzzing::{TARGETS, seeds::seeds};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The files of a target's corpus, sorted so a failure names the same file
/// on every run.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("the corpus of {target} is missing: {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Names the input being replayed if its target panics (the panic message
/// names the property that failed).
struct Naming<'a>(&'a Path);

impl Drop for Naming<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("while replaying {}", self.0.display());
        }
    }
}

#[test]
fn every_target_replays_its_corpus() {
    for (target, run) in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "the corpus of {target} is empty");
        let mut bytes = 0;
        for file in &files {
            let data = std::fs::read(file).unwrap();
            bytes += data.len();
            let _naming = Naming(file);
            run(&data);
        }
        println!("{target}: replayed {} inputs ({bytes} bytes)", files.len());
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for (target, _) in TARGETS {
        let file = targets.join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("fuzzing::{target}(")),
            "{} does not call fuzzing::{target}",
            file.display()
        );
    }
}

#[test]
fn every_seed_passes_its_target() {
    for (target, run) in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        seeds.iter().for_each(|seed| run(seed));
    }
}

/// Writes the seeds into the corpus directories, named by their BLAKE3
/// hash (run once when a target or a format is added; then fuzz and
/// `cargo fuzz cmin`):
/// `cargo test -p shoal-node --test fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes into fuzz/corpus"]
fn write_seeds() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for seed in seeds(target) {
            let name = format!("seed-{}", &blake3::hash(&seed).to_hex()[..16]);
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
}
