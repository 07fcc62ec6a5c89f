//! Image folders on real data: Fashion-MNIST written as PNG folders by
//! `scripts/fashion_mnist_png.py` reads back as exactly the IDX files' images and labels.

use std::path::Path;
use std::process::Command;

use federate_data::images::ImageFolder;
use federate_data::{FetchOptions, default_cache_dir, load};

/// Each example as (label, its pixels in 0..=255), sorted: the set, whatever the order.
fn rows(x: &[f32], y: &[u32], d: usize) -> Vec<(u32, Vec<u8>)> {
    let mut out: Vec<(u32, Vec<u8>)> = y
        .iter()
        .zip(x.chunks_exact(d))
        .map(|(l, px)| (*l, px.iter().map(|v| (v * 255.0).round() as u8).collect()))
        .collect();
    out.sort();
    out
}

#[test]
fn png_folders_from_the_script_hold_exactly_the_idx_images_and_labels() {
    let cache = default_cache_dir();
    let idx = load("fashion-mnist", &FetchOptions { cache_dir: cache.clone(), ..Default::default() }).unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fashion_mnist_png.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg(out.path())
        .args(["--cache", cache.to_str().unwrap(), "--limit-train", "3000", "--limit-test", "1000"])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let classes =
        ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"];
    let folder = ImageFolder {
        root: out.path().into(),
        shape: [28, 28, 1],
        classes: Some(classes.iter().map(|c| c.to_string()).collect()),
    };
    let tt = folder.train_test().unwrap().expect("train/ and test/");
    assert_eq!((tt.train.len(), tt.test.len()), (3000, 1000));
    let d = 28 * 28;
    let first = |set: &federate_data::Dataset, n: usize| rows(&set.x[..n * d], &set.y[..n], d);
    assert_eq!(rows(&tt.train.x, &tt.train.y, d), first(&idx.train, 3000));
    assert_eq!(rows(&tt.test.x, &tt.test.y, d), first(&idx.test, 1000));
    // Sorted folder names would be another class order: declared classes keep the labels.
    let sorted = ImageFolder { root: out.path().join("train"), shape: [28, 28, 1], classes: None };
    assert_eq!(sorted.class_names().unwrap()[0], "Ankle_boot");
}
