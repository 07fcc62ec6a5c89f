//! Image folders end to end through the `federate` binary: Fashion-MNIST written as PNG
//! folders by the script trains like the IDX files, and a corrupt image stops the run before
//! anything is written, naming the file.

use std::path::Path;
use std::process::{Command, Output};

fn federate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_federate")).args(args).output().expect("run federate")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `n_train` and `n_test` Fashion-MNIST images as PNG folders in `out`.
fn export(out: &Path, n_train: usize, n_test: usize) {
    let o = federate(&["data", "fetch", "fashion-mnist"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("python3")
        .arg(root().join("../../scripts/fashion_mnist_png.py"))
        .arg(out)
        .args(["--limit-train", &n_train.to_string(), "--limit-test", &n_test.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn run(folder: &Path, out: &Path, sets: &[&str]) -> Output {
    let example = root().join("../../examples/images/fashion-mnist-png.toml");
    let path = format!("data.path={:?}", folder.display().to_string());
    let mut args = vec!["run", example.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet", "--set", &path];
    for s in sets {
        args.extend(["--set", s]);
    }
    federate(&args)
}

#[test]
fn fashion_mnist_from_png_folders_trains_and_a_corrupt_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("png");
    export(&png, 6000, 1500);
    let small = ["model.name=\"mlp\"", "rounds=2", "train.epochs=1"];
    let o = run(&png, &dir.path().join("run"), &small);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/summary.json")).unwrap()).unwrap();
    let acc = summary["accuracy"].as_f64().unwrap();
    assert!(acc > 0.70, "Fashion-MNIST from PNG folders: {acc}");
    // The same federation from the IDX files, on the same 7,500 images drawn the same way,
    // reaches a comparable accuracy (the folders list the images class by class, so the draw
    // is not of the same images).
    let idx = dir.path().join("idx.toml");
    let text = std::fs::read_to_string(root().join("../../examples/images/fashion-mnist-png.toml")).unwrap();
    let text: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("path")
                && !l.starts_with("shape")
                && !l.starts_with("classes")
                && !l.contains("[data.images]")
        })
        .map(|l| l.replace("dataset = \"images\"", "dataset = \"fashion-mnist\"") + "\n")
        .collect();
    std::fs::write(&idx, text).unwrap();
    let idx_out = dir.path().join("idx");
    let mut args = vec!["run", idx.to_str().unwrap(), "--out", idx_out.to_str().unwrap(), "--quiet"];
    for s in small {
        args.extend(["--set", s]);
    }
    let o = federate(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("idx/summary.json")).unwrap()).unwrap();
    let idx_acc = summary["accuracy"].as_f64().unwrap();
    assert!((acc - idx_acc).abs() < 0.05, "PNG {acc} vs IDX {idx_acc}");

    // A corrupt image: one line naming it, no run directory.
    let bad = png.join("train/Coat/99999.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    let out = dir.path().join("bad");
    let o = run(&png, &out, &small);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{}: not a readable image (", bad.display())) && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!out.exists());
}
