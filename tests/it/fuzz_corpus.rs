//! Replays the saved fuzz corpus (`fuzz/corpus/<target>/`) and the inputs of crashes found
//! and fixed (`fuzz/regressions/<target>/`) through the same functions the `cargo fuzz`
//! targets run (`fuzz/harness.rs`), as ordinary tests: no fuzzer and no nightly needed.
//! scripts/fuzz.sh grows the corpus; docs/RELIABILITY.md has the record.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/harness.rs"]
mod fuzz_harness;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("corpus directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&root.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty: the replay would pass vacuously"
    );
    let regressions = inputs(&root.join("regressions").join(target));
    for p in corpus.iter().chain(&regressions) {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            // The panic message above says what broke; this says with which input.
            panic!(
                "fuzz target {target} fails on {} (reproduce: cd fuzz && cargo fuzz run {target} {})",
                p.display(),
                p.display()
            );
        }
    }
    println!(
        "fuzz corpus {target}: replayed {} corpus inputs and {} regressions",
        corpus.len(),
        regressions.len()
    );
    corpus.len() + regressions.len()
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), fuzz_harness::$target);
            }
        )*
    };
}

replay_tests!(
    protocol,
    basebackup,
    object,
    wal_inventory,
    wal_names,
    conninfo,
    config
);

#[test]
fn every_target_has_a_replay_test_and_every_corpus_a_target() {
    let names: Vec<&str> = fuzz_harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "protocol",
            "basebackup",
            "object",
            "wal_inventory",
            "wal_names",
            "conninfo",
            "config"
        ],
        "a target was added to fuzz/harness.rs: add it to replay_tests! above"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for sub in ["corpus", "regressions", "fuzz_targets"] {
        for p in std::fs::read_dir(root.join(sub)).into_iter().flatten() {
            let p = p.expect("fuzz directory entry").path();
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            assert!(names.contains(&stem), "{} names no target", p.display());
        }
    }
}
