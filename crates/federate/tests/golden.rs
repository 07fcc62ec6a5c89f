//! Behaviour pinned byte for byte: the SHA-256 of `model.safetensors` after two rounds of
//! every config in examples/ and of the defaults (the worked example), on one thread, must
//! equal the hashes recorded in `golden.toml`. A change that should not move a number (a
//! refactor, a new option left off) passes; one that does fails here, naming the configs.
//!
//! Floating-point sums differ between instruction sets (the GEMM kernels of an AVX-512
//! machine add in another order than an AVX2 one's), so the hashes are recorded per
//! instruction set. On one with no record yet, every run is done twice and must agree (the
//! runs are deterministic), and the hashes to record are printed.
//!
//! To record after an intended change: `FEDERATE_GOLDEN_RECORD=1 cargo test -p federate
//! --test golden`, then review the diff of golden.toml (say why in the commit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The settings every config runs with here (two rounds, one thread, one local epoch, no
/// train-alone baseline: the smallest run that still exercises every round's path).
const ARGS: [&str; 9] =
    ["--rounds", "2", "--threads", "1", "--quiet", "--set", "train.epochs=1", "--set", "evaluation.baseline=false"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every config under examples/, as paths relative to the repository root, plus "defaults".
fn configs() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root().join("examples"), &mut found);
    let mut names: Vec<String> =
        found.iter().map(|p| p.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/")).collect();
    names.push("defaults".into());
    names.sort();
    names
}

/// Fashion-MNIST as PNG folders (the first 6,000 training and 1,500 test images, what the
/// worked-example partition draws from), made once for the image-folder examples.
fn png_folder() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let fetch = Command::new(env!("CARGO_BIN_EXE_federate")).args(["data", "fetch", "fashion-mnist"]).output();
        assert!(fetch.unwrap().status.success());
        let o = Command::new("python3")
            .arg(root().join("scripts/fashion_mnist_png.py"))
            .arg(dir.path())
            .args(["--limit-train", "6000", "--limit-test", "1500"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        dir
    })
    .path()
}

fn model_hash(config: &str) -> String {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_federate"));
    cmd.arg("run");
    if config != "defaults" {
        cmd.arg(root().join(config));
    }
    if config.starts_with("examples/images/") {
        cmd.args(["--set", &format!("data.path={:?}", png_folder().display().to_string())]);
    }
    let o = cmd.args(ARGS).arg("--out").arg(out.path()).output().unwrap();
    assert!(o.status.success(), "{config}: {}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    federate_data::fetch::sha256_hex(&bytes)
}

/// The model hash of every config, two single-threaded runs at a time.
fn hash_all(configs: &[String]) -> BTreeMap<String, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(c) = configs.get(i) else { break };
                    let h = model_hash(c);
                    out.lock().unwrap().insert(c.clone(), h);
                }
            });
        }
    });
    out.into_inner().unwrap()
}

/// The instruction set whose float sums these hashes depend on.
fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") { "x86_64-avx512" } else { "x86_64-avx2" }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

#[test]
fn two_rounds_of_every_example_give_the_recorded_models() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut golden: BTreeMap<String, BTreeMap<String, String>> = toml::from_str(&text).unwrap();
    let hashes = hash_all(&configs());
    if std::env::var_os("FEDERATE_GOLDEN_RECORD").is_some() {
        golden.insert(isa().to_string(), hashes);
        let header = "# SHA-256 of model.safetensors after two rounds of each config (see tests/golden.rs), per\n\
                      # instruction set. Written by FEDERATE_GOLDEN_RECORD=1; a change here needs a reason.\n\n";
        std::fs::write(&path, format!("{header}{}", toml::to_string(&golden).unwrap())).unwrap();
        return;
    }
    match golden.get(isa()) {
        Some(recorded) => {
            let moved: Vec<String> = hashes
                .iter()
                .filter(|(c, h)| recorded.get(*c) != Some(h))
                .map(|(c, h)| format!("{c}: {h} (recorded {})", recorded.get(c).map_or("nothing", |s| s)))
                .chain(recorded.keys().filter(|c| !hashes.contains_key(*c)).map(|c| format!("{c}: no longer exists")))
                .collect();
            assert!(
                moved.is_empty(),
                "models changed on {}:\n{}\nIf intended, record with FEDERATE_GOLDEN_RECORD=1 and say why.",
                isa(),
                moved.join("\n")
            );
        }
        None => {
            let again = hash_all(&hashes.keys().cloned().collect::<Vec<_>>());
            assert_eq!(hashes, again, "runs on {} are not deterministic", isa());
            eprintln!(
                "no golden hashes recorded for {}; these runs were deterministic. Record them with \
                 FEDERATE_GOLDEN_RECORD=1:\n{hashes:#?}",
                isa()
            );
        }
    }
}
