//! Tables end to end through the `federate` binary, on real data: the Breast Cancer
//! Wisconsin table across 3 hospitals (federated within a point of the pooled model), the
//! diabetes regression table, a hospital's own CSV files (one per party, or one file with a
//! hospital column), and bad files and configs refused with messages that name the file,
//! line and column, or the key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn federate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_federate")).args(args).output().expect("run federate")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tables").join(name).display().to_string()
}

fn run(config: &str, out: &Path, sets: &[&str]) -> Output {
    let mut args = vec!["run", config, "--out", out.to_str().unwrap(), "--quiet", "--force"];
    for s in sets {
        args.extend(["--set", s]);
    }
    federate(&args)
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn metric(v: &serde_json::Value, section: &str, name: &str) -> f64 {
    v[section][name].as_f64().unwrap_or_else(|| panic!("{section}.{name} in {v}"))
}

#[test]
fn breast_cancer_across_three_hospitals_is_within_a_point_of_the_pooled_model() {
    let out = tempfile::tempdir().unwrap();
    let o = run(&example("breast-cancer.toml"), out.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(out.path());
    for m in ["auc", "accuracy"] {
        let (fed, pooled) = (metric(&s, "federated", m), metric(&s, "pooled", m));
        assert!(fed >= pooled - 0.01, "{m}: federated {fed} vs pooled {pooled}");
    }
    assert!(metric(&s, "federated", "auc") > 0.97, "{s}");
    for m in ["balanced_accuracy", "f1", "log_loss", "ece"] {
        metric(&s, "federated", m);
    }
    // The label skew: the hospitals' malignant fractions differ, and each has its own test rows.
    let parties = s["parties"].as_array().unwrap();
    assert_eq!(parties.len(), 3);
    let tests: u64 = parties.iter().map(|p| p["test_examples"].as_u64().unwrap()).sum();
    assert_eq!(tests, 142, "a quarter of 569 rows, stratified (53 + 89)");
    // Round 0's statistics are recorded and travel with the model.
    let pre: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("preprocessing.json")).unwrap()).unwrap();
    assert_eq!(pre["features"].as_array().unwrap().len(), 30);
    assert_eq!(pre["moments"]["count"].as_u64(), Some(427));
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let text = &meta.metadata().as_ref().unwrap()["federate"];
    assert!(text.contains("preprocessing=") && text.contains("worst_concave_points"), "{text}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("(auc)") && table.contains("pooled"), "{table}");
}

#[test]
fn diabetes_regression_reports_rmse_and_r2_beside_alone_and_pooled() {
    let out = tempfile::tempdir().unwrap();
    let o = run(&example("diabetes.toml"), out.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(out.path());
    let (fed, pooled) = (metric(&s, "federated", "rmse"), metric(&s, "pooled", "rmse"));
    assert!(fed <= pooled * 1.03, "federated RMSE {fed} vs pooled {pooled}");
    // Linear regression explains about half the variance of this table.
    assert!(metric(&s, "federated", "r2") > 0.4, "{s}");
    assert!(metric(&s, "alone", "rmse") > fed, "{s}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("final global rmse"));
    // Huber instead of MSE trains as well (δ = 1 in standardised target units: 77 here).
    let o = run(&example("diabetes.toml"), out.path(), &["model.loss=\"huber\""]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(out.path());
    assert!(metric(&s, "federated", "rmse") <= metric(&s, "pooled", "rmse") * 1.03, "{s}");
}

#[test]
fn grunfeld_firms_as_parties_match_the_pooled_model() {
    let out = tempfile::tempdir().unwrap();
    let o = run(&example("grunfeld.toml"), out.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(out.path());
    let ids: Vec<&str> = s["parties"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 11);
    assert!(ids.contains(&"General-Motors") && ids.contains(&"IBM"), "{ids:?}");
    assert!(s["parties"].as_array().unwrap().iter().all(|p| p["test_examples"] == 5), "{s}");
    let (fed, pooled) = (metric(&s, "federated", "r2"), metric(&s, "pooled", "r2"));
    assert!(fed > 0.7 && fed >= pooled - 0.03, "federated R² {fed} vs pooled {pooled}");
}

#[test]
fn wine_multiclass_reports_macro_metrics_and_dp_trains_every_task() {
    let out = tempfile::tempdir().unwrap();
    let o = run(&example("wine.toml"), out.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(out.path());
    let (fed, pooled) = (metric(&s, "federated", "balanced_accuracy"), metric(&s, "pooled", "balanced_accuracy"));
    assert!(fed > 0.9 && fed >= pooled - 0.01, "federated {fed} vs pooled {pooled}");
    assert!(s["federated"].get("auc").is_none(), "AUC is for binary tasks: {s}");
    // A winery without one cultivar: its model alone misses that class on the pooled set.
    let lacking =
        s["parties"].as_array().unwrap().iter().find(|p| p["train_classes"].as_array().unwrap().contains(&0.into()));
    if let Some(p) = lacking {
        assert!(p["alone_on_pooled"]["balanced_accuracy"].as_f64().unwrap() < fed, "{p}");
    }
    // DP-SGD (per-example clipping of each task's loss) on the binary and regression tables.
    // Regression targets are standardised in round 0 like the features, so the clip norm and
    // learning rate do not depend on the target's units.
    let dp = ["privacy.mechanism=\"gaussian\"", "privacy.noise_multiplier=1.0", "evaluation.pooled=false"];
    for (ex, m, floor) in [("breast-cancer.toml", "auc", 0.9), ("diabetes.toml", "r2", 0.3)] {
        let mut sets = dp.to_vec();
        sets.extend(if ex == "diabetes.toml" { ["rounds=10", "train.lr=0.05"] } else { ["rounds=3", "train.lr=0.1"] });
        let o = run(&example(ex), out.path(), &sets);
        assert!(o.status.success(), "{ex}: {}", String::from_utf8_lossy(&o.stderr));
        let s = summary(out.path());
        assert!(metric(&s, "federated", m) > floor, "{ex}: {s}");
        assert!(s["parties"].as_array().unwrap().iter().all(|p| p["epsilon"].as_f64().unwrap() > 0.0), "{ex}: {s}");
    }
}

/// The cached breast cancer CSV (fetched by running the example once).
fn breast_cancer_rows() -> (String, Vec<String>) {
    let cache = tempfile::tempdir().unwrap();
    let out = cache.path().join("run");
    let o = run(&example("breast-cancer.toml"), &out, &["rounds=1", "evaluation.baseline=false"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cache_dir =
        std::env::var_os("FEDERATE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| dirs_cache().join("federate"));
    let text = std::fs::read_to_string(cache_dir.join("sklearn-1.5.2/breast-cancer.csv")).unwrap();
    let mut lines = text.lines().map(String::from);
    let header = lines.next().unwrap();
    (header, lines.collect())
}

fn dirs_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
}

fn write_config(dir: &Path, data: &str) -> String {
    let p = dir.join("own.toml");
    std::fs::write(
        &p,
        format!(
            "seed = 1\nrounds = 5\n[data]\n{data}\n[data.schema]\ntask = \"binary\"\nlabel = \"diagnosis\"\nclasses \
             = [\"benign\", \"malignant\"]\nexclude = [\"record\"]\n[model]\nname = \"logreg\"\n[train]\nepochs = \
             2\nbatch_size = 16\nlr = 0.1\nmomentum = 0.0\n"
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn own_csv_files_one_per_hospital_or_one_with_a_hospital_column() {
    let (header, rows) = breast_cancer_rows();
    let dir = tempfile::tempdir().unwrap();
    // Three hospitals' exports, each with its own record numbers: rows dealt round-robin.
    let mut files = Vec::new();
    let mut all = format!("record,hospital,{header}\n");
    for h in 0..3 {
        let path = dir.path().join(format!("hospital-{h}.csv"));
        let mut text = format!("record,{header}\n");
        for (i, r) in rows.iter().enumerate().filter(|(i, _)| i % 3 == h) {
            text.push_str(&format!("{i},{r}\n"));
            all.push_str(&format!("{i},site-{h},{r}\n"));
        }
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let sources: String = files
        .iter()
        .enumerate()
        .map(|(h, f)| format!("[[data.sources]]\nid = \"hospital-{h}\"\npath = {:?}\n", f.display().to_string()))
        .collect();
    let cfg = write_config(dir.path(), &format!("dataset = \"table\"\nparties = 3\n{sources}"));
    let out = dir.path().join("per-party");
    let o = run(&cfg, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    let ids: Vec<&str> = s["parties"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["hospital-0", "hospital-1", "hospital-2"]);
    assert!(metric(&s, "federated", "auc") > 0.95, "{s}");
    // One file, partitioned by its hospital column (not a feature).
    let one = dir.path().join("all.csv");
    std::fs::write(&one, all).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "dataset = \"table\"\npath = {:?}\npartition = \"natural\"\npartition_column = \"hospital\"\nparties = 3",
            one.display().to_string()
        ),
    );
    let out = dir.path().join("by-column");
    let o = run(&cfg, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    let ids: Vec<&str> = s["parties"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["site-0", "site-1", "site-2"]);
    let pre = std::fs::read_to_string(out.join("preprocessing.json")).unwrap();
    assert!(!pre.contains("hospital") && !pre.contains("record"), "{pre}");
    // The wrong party count names the values found.
    let o = run(&cfg, &out, &["data.parties=4"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("has 3 distinct values (site-0, site-1, site-2)"), "{err}");
}

#[test]
fn bad_files_and_configs_are_one_line_errors_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cases = [
        (file("nolabel.csv", "record,a\n1,2\n"), ", column 'diagnosis': no such column (named by data.schema.label)"),
        (
            file("text.csv", "record,a,diagnosis\n1,2,benign\n2,abc,malignant\n"),
            ", line 3, column 'a': 'abc' is not a number: fix the value, or declare the column in data.schema.categorical if it is a category",
        ),
        (
            file("class.csv", "record,a,diagnosis\n1,2,benign\n2,3,unknown\n"),
            ", line 3, column 'diagnosis': 'unknown' is not one of the classes [benign, malignant]: add it to data.schema.classes or fix the row",
        ),
        (file("empty.csv", ""), ": the file is empty: it needs a header row naming the columns"),
        (
            file("ragged.csv", "record,a,diagnosis\n1,2,benign\n2,3\n"),
            ", line 3: the row has 2 fields but the header has 3: every row needs one value per column",
        ),
    ];
    for (path, want) in &cases {
        let cfg = write_config(
            dir.path(),
            &format!("dataset = \"table\"\npath = {path:?}\npartition = \"iid\"\nparties = 1"),
        );
        let o = run(&cfg, &dir.path().join("out"), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{path}");
        assert!(err.contains(&format!("{path}{want}")), "{path}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!dir.path().join("out").exists(), "a file that cannot be read leaves no run directory");
    }
    // Config keys that cannot apply are refused by name.
    let cfg = write_config(dir.path(), &format!("dataset = \"table\"\npath = {:?}\nparties = 1", cases[0].0));
    let o = run(&cfg, &dir.path().join("out"), &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("a table is split by"), "{o:?}");
    for (set, want) in [
        ("evaluation.metric=\"rmse\"", "evaluation.metric = \"rmse\" applies to regression tasks"),
        ("model.huber_delta=2.0", "model.loss and model.huber_delta apply to regression tables"),
        ("data.test_fraction=1.5", "data.test_fraction = 1.5 must be in (0, 1)"),
    ] {
        let o = run(&example("breast-cancer.toml"), &dir.path().join("out"), &[set]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{set}: {err}");
    }
    let o = federate(&["run", "--set", "data.path=\"x.csv\"", "--out", dir.path().join("o").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("data.path is read only by dataset = \"table\""), "{err}");
}
