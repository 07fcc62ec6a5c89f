//! Deployment end to end: `federate keys`, `federate serve` and three `federate join`
//! processes on loopback with mutual TLS. The final model must equal `federate run`'s bit
//! for bit; the federation must survive a party killed mid-round and a server killed and
//! resumed; parties without a valid certificate or not on the allow-list are refused.
//!
//! Every wait here is bounded; a test that hangs fails after its deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_federate")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Fed {
    dir: tempfile::TempDir,
    port: u16,
    children: Vec<Child>,
}

impl Drop for Fed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fed {
    /// A directory with keys (for party-1..3 plus `extra` identities) and a config.
    fn new(config_body: &str, extra: &[&str]) -> Fed {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut parties = vec!["party-1", "party-2", "party-3"];
        parties.extend_from_slice(extra);
        let ok = Command::new(bin())
            .args(["keys", "--out", "keys", "--parties", &parties.join(",")])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        let cfg = format!(
            "{config_body}\n[server]\nlisten = \"127.0.0.1:{port}\"\nparties = [\"party-1\", \"party-2\", \"party-3\"]\n\
             start_wait_s = 60\nrejoin_wait_s = 20\nheartbeat_s = 1\nparty_timeout_s = 10\n\
             [server.tls]\nca = \"keys/ca.pem\"\ncert = \"keys/server.pem\"\nkey = \"keys/server.key\"\n"
        );
        std::fs::write(dir.path().join("fed.toml"), cfg).unwrap();
        Fed { dir, port, children: Vec::new() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    fn spawn(&mut self, log: &str, args: &[&str]) -> usize {
        let f = std::fs::File::create(self.path().join(log)).unwrap();
        let child = Command::new(bin())
            .args(args)
            .current_dir(self.path())
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    fn serve(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["serve", "--config", "fed.toml", "--out", "srv"];
        args.extend_from_slice(extra);
        let log = if extra.contains(&"--resume") { "serve2.log" } else { "serve.log" };
        self.spawn(log, &args)
    }

    fn join(&mut self, id: &str, keys: &str, log: &str) -> usize {
        // A party-N identity takes partition N; any other takes partition 1.
        let partition: &[&str] = if id.starts_with("party-") { &[] } else { &["--partition", "1"] };
        self.join_with(id, keys, log, partition)
    }

    /// `federate join` as `id` with the certificates in `keys` and `extra` arguments.
    fn join_with(&mut self, id: &str, keys: &str, log: &str, extra: &[&str]) -> usize {
        let url = format!("https://127.0.0.1:{}", self.port);
        let mut args = vec![
            "join",
            "--server",
            &url,
            "--id",
            id,
            "--config",
            "fed.toml",
            "--tls-dir",
            keys,
            "--server-name",
            "localhost",
        ];
        args.extend_from_slice(extra);
        self.spawn(log, &args)
    }

    /// A party joining with its own table file (`--data`).
    fn join_with_file(&mut self, id: &str, file: &str, log: &str) -> usize {
        self.join_with(id, "keys", log, &["--data", file])
    }

    fn wait(&mut self, i: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.children[i].try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process {i} did not finish within {within:?}");
    }

    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// Starts the server and parties 1–3, and kills party-3 while it trains in round 2;
    /// returns the server's index.
    fn serve_and_kill_party_3_in_round_2(&mut self) -> usize {
        let s = self.serve(&[]);
        let mut joins = Vec::new();
        for i in 1..=3 {
            joins.push(self.join(&format!("party-{i}"), "keys", &format!("join{i}.log")));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.log("join3.log").contains("round 2: training") {
            assert!(Instant::now() < deadline, "party-3 never started round 2:\n{}", self.log("join3.log"));
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill(joins[2]);
        s
    }

    fn rounds(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path().join("srv/rounds.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_rounds(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.rounds().len() < n {
            assert!(Instant::now() < deadline, "round {n} not recorded within {within:?}:\n{}", self.log("serve.log"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn simulate(&self) -> Vec<u8> {
        let o = Command::new(bin())
            .args(["run", "fed.toml", "--out", "sim", "--quiet"])
            .current_dir(self.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(self.path().join("sim/model.safetensors")).unwrap()
    }

    fn model(&self) -> Vec<u8> {
        std::fs::read(self.path().join("srv/model.safetensors")).unwrap()
    }
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect()
}

const WORKED_EXAMPLE_3_ROUNDS: &str = "seed = 42\nrounds = 3\nthreads = 1\n[evaluation]\nbaseline = false\n";

#[test]
fn mutual_tls_federation_equals_the_simulation_bit_for_bit() {
    // With 4-bit updates under zstd and error feedback, and the model broadcast in 4 bits: the
    // server decodes what each party encoded, and each party what the server encoded, exactly
    // as the simulation does.
    let compressed =
        format!("{WORKED_EXAMPLE_3_ROUNDS}[compression]\nupdate = \"q4\"\nbroadcast = \"q4\"\nzstd = true\n");
    let mut f = Fed::new(&compressed, &[]);
    let s = f.serve(&[]);
    for i in 1..=3 {
        f.join(&format!("party-{i}"), "keys", &format!("join{i}.log"));
    }
    assert!(f.wait(s, Duration::from_secs(600)), "{}", f.log("serve.log"));
    for i in 1..=3 {
        assert!(f.wait(i, Duration::from_secs(30)), "{}", f.log(&format!("join{i}.log")));
    }
    let rounds = f.rounds();
    assert_eq!(rounds.len(), 3);
    assert!(rounds.iter().all(|r| r["failures"].as_array().unwrap().is_empty()));
    assert!(rounds[2]["accuracy"].as_f64().unwrap() > 0.95, "{:?}", rounds[2]["accuracy"]);
    // 3 CNN updates of 6.65 MB as 32-bit floats; 4 bits a value is under an eighth of that.
    let up = rounds[1]["bytes_up"].as_u64().unwrap();
    assert!(up > 0 && up < 3 * 6_653_480 / 7, "{up}");
    // Down, the initial model's 4-bit values and then each round's 4-bit change.
    for r in &rounds {
        let down = r["bytes_down"].as_u64().unwrap();
        assert!(down > 0 && down < 2 * 3 * 6_653_480 / 7, "round {}: {down} bytes down", r["round"]);
    }
    assert!(f.log("serve.log").contains("mutual TLS"));
    assert_eq!(f.model(), f.simulate(), "deployment and simulation differ");
}

const SMALL: &str = "seed = 3\nrounds = 3\nthreads = 1\n[data]\ntrain_per_party = 600\ntest_per_party = 100\n\
                     [train]\nepochs = 1\n[strategy]\nmin_replies = 2\n[evaluation]\nbaseline = false\n";

#[test]
fn a_party_killed_mid_round_is_dropped_for_that_round_and_rejoins() {
    // Under a compressed broadcast: the rejoined party holds no model, so it is sent the
    // values while the others get the change.
    let mut f = Fed::new(&format!("{SMALL}[compression]\nbroadcast = \"q8\"\n"), &[]);
    let s = f.serve_and_kill_party_3_in_round_2();
    f.join("party-3", "keys", "join3b.log");
    assert!(f.wait(s, Duration::from_secs(300)), "{}", f.log("serve.log"));
    let r = f.rounds();
    assert_eq!(r.len(), 3);
    assert_eq!(ids(&r[1], "fit"), vec!["party-1", "party-2"], "{}", r[1]);
    assert!(r[1]["aggregated"].as_bool().unwrap());
    let failed = ids(&r[1], "failures");
    assert!(failed.contains(&"party-3".to_string()), "{}", r[1]);
    assert_eq!(ids(&r[2], "fit"), vec!["party-1", "party-2", "party-3"], "{}", r[2]);
    assert!(ids(&r[2], "failures").is_empty(), "{}", r[2]);
    assert!(f.log("serve.log").contains("party=party-3"), "{}", f.log("serve.log"));
}

#[test]
fn a_scaffold_party_restarted_mid_round_continues_with_its_saved_control_variate() {
    // SCAFFOLD keeps c_k in every party. Without the state party-3 saved after round 1, the
    // restarted process would be refused in round 3 ("party-side state missing").
    // Its updates are top-5 % with error feedback: the residual is saved and restored too.
    let cfg = SMALL.replace("[strategy]\n", "[strategy]\nname = \"scaffold\"\n");
    let mut f = Fed::new(&format!("{cfg}[compression]\nupdate = \"top-k\"\nfraction = 0.05\n"), &[]);
    let s = f.serve_and_kill_party_3_in_round_2();
    // Its control variate, in this federation's own file (party-3.<seed>-<values>.f32).
    let saved = std::fs::read_dir(f.path().join("party-state"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(saved.iter().any(|n| n.starts_with("party-3.") && n.ends_with(".f32")), "no state saved: {saved:?}");
    let p3 = f.join("party-3", "keys", "join3b.log");
    assert!(f.wait(s, Duration::from_secs(300)), "{}", f.log("serve.log"));
    let r = f.rounds();
    assert_eq!(r.len(), 3);
    assert!(ids(&r[1], "failures").contains(&"party-3".to_string()), "{}", r[1]);
    assert_eq!(ids(&r[2], "fit"), vec!["party-1", "party-2", "party-3"], "{}", r[2]);
    assert!(ids(&r[2], "failures").is_empty(), "{}", r[2]);
    f.wait(p3, Duration::from_secs(30));
    let log = f.log("join3b.log");
    assert!(log.contains("restored its saved state") && log.contains("error-feedback residual: kept"), "{log}");
}

#[test]
fn a_killed_server_resumes_from_its_checkpoint_and_finishes_identically() {
    // Under a compressed broadcast, whose model is what the parties reconstruct.
    let cfg = SMALL.replace("rounds = 3", "rounds = 4");
    let mut f = Fed::new(&format!("{cfg}[compression]\nbroadcast = \"q4\"\n"), &[]);
    let s = f.serve(&[]);
    for i in 1..=3 {
        f.join(&format!("party-{i}"), "keys", &format!("join{i}.log"));
    }
    f.wait_rounds(2, Duration::from_secs(120));
    f.kill(s);
    let s2 = f.serve(&["--resume"]);
    assert!(f.wait(s2, Duration::from_secs(300)), "{}", f.log("serve2.log"));
    assert!(f.log("serve2.log").contains("resuming after round"), "{}", f.log("serve2.log"));
    assert_eq!(f.rounds().len(), 4);
    assert_eq!(f.model(), f.simulate(), "resumed run differs from an uninterrupted one");
}

#[test]
fn parties_without_a_valid_certificate_or_not_allowed_are_refused() {
    let mut f = Fed::new(SMALL, &["intruder"]);
    // A second, unrelated CA.
    let o = Command::new(bin())
        .args(["keys", "--out", "other", "--parties", "party-1"])
        .current_dir(f.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    // Trusts the real server, but presents a party-1 certificate signed by the other CA.
    let mixed = f.path().join("mixed");
    std::fs::create_dir_all(mixed.join("parties")).unwrap();
    std::fs::copy(f.path().join("keys/ca.pem"), mixed.join("ca.pem")).unwrap();
    for ext in ["pem", "key"] {
        std::fs::copy(
            f.path().join(format!("other/parties/party-1.{ext}")),
            mixed.join(format!("parties/party-1.{ext}")),
        )
        .unwrap();
    }
    // Signed by the right CA, but issued to someone else.
    let stolen = f.path().join("stolen");
    std::fs::create_dir_all(stolen.join("parties")).unwrap();
    std::fs::copy(f.path().join("keys/ca.pem"), stolen.join("ca.pem")).unwrap();
    for ext in ["pem", "key"] {
        std::fs::copy(
            f.path().join(format!("keys/parties/intruder.{ext}")),
            stolen.join(format!("parties/party-2.{ext}")),
        )
        .unwrap();
    }
    let s = f.serve(&[]);
    let wrong_ca = f.join("party-1", "mixed", "wrong-ca.log");
    let impostor = f.join("party-2", "stolen", "impostor.log");
    assert!(!f.wait(impostor, Duration::from_secs(60)));
    assert!(f.log("impostor.log").contains("not issued to 'party-2'"), "{}", f.log("impostor.log"));
    let intruder = f.join("intruder", "keys", "intruder.log");
    // The intruder is refused at once and exits with the reason.
    assert!(!f.wait(intruder, Duration::from_secs(60)));
    assert!(f.log("intruder.log").contains("not on the allow-list"), "{}", f.log("intruder.log"));
    // Random bytes on the port are refused too.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", f.port)).unwrap();
        let _ = s.write_all(&[0x17, 0x03, 0x03, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = f.log("serve.log");
        if log.contains("not on the allow-list") && log.matches("TLS handshake failed").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "refusals not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = f.log("serve.log");
    assert!(
        log.contains("UnknownIssuer") || log.contains("unknown issuer") || log.contains("invalid peer certificate"),
        "{log}"
    );
    // Permanent mistakes fail at once with their cause instead of retrying for minutes: a
    // certificate from another CA (either side), a missing file, a URL without a scheme,
    // plaintext against the TLS port.
    assert!(!f.wait(wrong_ca, Duration::from_secs(60)));
    assert!(f.log("wrong-ca.log").contains("certificate"), "{}", f.log("wrong-ca.log"));
    let url = format!("https://127.0.0.1:{}", f.port);
    let plain = format!("http://127.0.0.1:{}", f.port);
    let bare = format!("127.0.0.1:{}", f.port);
    let cases: [(&str, Vec<&str>, &str); 5] = [
        // Started with another seed, so its data split would silently differ: refused by name.
        (
            "seed.log",
            vec!["--server", &url, "--tls-dir", "keys", "--set", "seed=7"],
            "seed = 7 where the federation has 3",
        ),
        ("untrusted-server.log", vec!["--server", &url, "--tls-dir", "other"], "server's certificate is not one"),
        ("missing.log", vec!["--server", &url, "--tls-dir", "nowhere"], "nowhere/ca.pem"),
        ("bare.log", vec!["--server", &bare, "--tls-dir", "keys"], "needs a scheme"),
        ("plain.log", vec!["--server", &plain, "--insecure"], "check the scheme"),
    ];
    for (log, args, cause) in cases {
        let mut all = vec!["join", "--id", "party-1", "--config", "fed.toml", "--server-name", "localhost"];
        all.extend(args);
        if log == "plain.log" {
            all.retain(|a| *a != "--server-name" && *a != "localhost");
        }
        let i = f.spawn(log, &all);
        assert!(!f.wait(i, Duration::from_secs(60)), "{log}");
        assert!(f.log(log).contains(cause), "{log}: {}", f.log(log));
    }
    // party-3's key is made on the party and only its request signed by the CA (its old
    // files are moved away first: `keys` never overwrites a key).
    let keys = f.path().join("keys/parties");
    for ext in ["pem", "key"] {
        std::fs::rename(keys.join(format!("party-3.{ext}")), f.path().join(format!("old-party-3.{ext}"))).unwrap();
    }
    let run = |args: &[&str]| {
        let o = Command::new(bin()).args(args).current_dir(f.path()).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["keys", "--csr", "--parties", "party-3", "--out", "p3"]);
    run(&["keys", "--sign", "p3/party-3.csr", "--parties", "party-3", "--out", "keys"]);
    assert!(!keys.join("party-3.key").exists(), "the CA never sees the party's key");
    std::fs::copy(keys.join("party-3.pem"), f.path().join("p3/parties/party-3.pem")).unwrap();
    std::fs::copy(f.path().join("keys/ca.pem"), f.path().join("p3/ca.pem")).unwrap();
    // The federation itself still works afterwards, party-3 with its own key.
    for i in 1..=2 {
        f.join(&format!("party-{i}"), "keys", &format!("join{i}.log"));
    }
    f.join("party-3", "p3", "join3.log");
    assert!(f.wait(s, Duration::from_secs(300)), "{}", f.log("serve.log"));
    assert_eq!(f.rounds().len(), 3);
    assert!(f.rounds().iter().all(|r| r["fit"].as_array().unwrap().iter().any(|p| p["id"] == "party-3")));
}

#[test]
fn serve_refuses_to_run_without_tls_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "rounds = 1\n").unwrap();
    let o = Command::new(bin()).args(["serve", "--config", "c.toml"]).current_dir(dir.path()).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("federate keys") && err.contains("--insecure"), "{err}");
    let _ = PathBuf::new();
    // --insecure on the default 0.0.0.0 is refused; it needs a second, explicit flag.
    let o = Command::new(bin())
        .args(["serve", "--config", "c.toml", "--insecure", "--out", "r0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a loopback address") && err.contains("--insecure-non-loopback"), "{err}");
}

#[test]
fn serve_never_overwrites_an_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "rounds = 1\n[model]\nname = \"logreg\"\n[server]\nlisten = \"127.0.0.1:0\"\nstart_wait_s = 1\n";
    std::fs::write(dir.path().join("c.toml"), cfg).unwrap();
    std::fs::create_dir_all(dir.path().join("run/checkpoint")).unwrap();
    std::fs::write(dir.path().join("run/rounds.jsonl"), "six rounds of records\n").unwrap();
    std::fs::write(dir.path().join("run/checkpoint/checkpoint.json"), "{}").unwrap();
    let o = Command::new(bin())
        .args(["serve", "--config", "c.toml", "--insecure", "--out", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already holds a run") && err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("run/rounds.jsonl")).unwrap(), "six rounds of records\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("run/checkpoint/checkpoint.json")).unwrap(), "{}");
    // --resume on a checkpoint that is not one names the file instead of starting afresh.
    let o = Command::new(bin())
        .args(["serve", "--config", "c.toml", "--insecure", "--out", "run", "--resume"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("checkpoint.json"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("run/rounds.jsonl")).unwrap(), "six rounds of records\n");
}

#[test]
fn a_server_no_party_reaches_exits_non_zero_and_writes_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "rounds = 2\n[model]\nname = \"logreg\"\n[server]\nlisten = \"127.0.0.1:0\"\nstart_wait_s = 1\n";
    std::fs::write(dir.path().join("c.toml"), cfg).unwrap();
    let o = Command::new(bin())
        .args(["serve", "--config", "c.toml", "--insecure", "--out", "run"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{out}{err}");
    assert!(err.contains("only 0 of 3 parties connected") && err.contains("no model written"), "{err}");
    assert!(out.contains("INSECURE") || !out.contains("round "), "{out}");
    assert!(!dir.path().join("run/model.safetensors").exists());
}

/// The breast cancer table as a CSV (header, rows), from the cache (`federate data fetch`).
fn breast_cancer() -> (String, Vec<String>) {
    let o = Command::new(bin()).args(["data", "fetch", "breast-cancer"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let path = text.trim().rsplit(": ").next().unwrap().to_string();
    let csv = std::fs::read_to_string(path).unwrap();
    let mut lines = csv.lines().map(String::from);
    let header = lines.next().unwrap();
    (header, lines.collect())
}

#[test]
fn hospitals_joining_with_their_own_csv_files_equal_the_simulation_and_round_0_never_pools_rows() {
    let (header, rows) = breast_cancer();
    let features: Vec<String> = header.split(',').filter(|c| *c != "diagnosis").map(|c| format!("{c:?}")).collect();
    let sources: String =
        (1..=3).map(|i| format!("[[data.sources]]\nid = \"party-{i}\"\npath = \"party-{i}.csv\"\n")).collect();
    let body = format!(
        "seed = 7\nrounds = 3\nthreads = 1\n[data]\ndataset = \"table\"\nparties = 3\n{sources}\
         [data.schema]\ntask = \"binary\"\nlabel = \"diagnosis\"\nclasses = [\"benign\", \"malignant\"]\n\
         features = [{}]\n[model]\nname = \"logreg\"\n[train]\nepochs = 1\nbatch_size = 16\nlr = 0.1\n\
         momentum = 0.0\n[evaluation]\nbaseline = false\n",
        features.join(", ")
    );
    let mut f = Fed::new(&body, &["party-4"]);
    // Three hospitals' exports (rows dealt by a label-skewed rule: malignant rows go mostly
    // to hospital 1), and a fourth whose export lacks a column.
    for h in 1..=3 {
        let mine = rows.iter().enumerate().filter(|(i, r)| {
            let m = r.ends_with("malignant");
            (if m { i % 5 < 3 } else { i % 3 == 0 }) == (h == 1) && (h == 1 || i % 2 == h - 2)
        });
        let text: String = mine.map(|(_, r)| format!("{r}\n")).collect();
        std::fs::write(f.path().join(format!("party-{h}.csv")), format!("{header}\n{text}")).unwrap();
    }
    let short: Vec<&str> = header.split(',').skip(1).collect();
    let rest: String = rows.iter().take(20).map(|r| format!("{}\n", r.split_once(',').unwrap().1)).collect();
    std::fs::write(f.path().join("party-4.csv"), format!("{}\n{rest}", short.join(","))).unwrap();
    let s = f.serve(&[]);
    for i in 1..=3 {
        f.join_with_file(&format!("party-{i}"), &format!("party-{i}.csv"), &format!("join{i}.log"));
    }
    // A party whose file lacks a feature column never joins: it exits non-zero, naming it.
    let bad = f.join_with_file("party-4", "party-4.csv", "join4.log");
    assert!(!f.wait(bad, Duration::from_secs(60)));
    assert!(
        f.log("join4.log").contains("column 'mean_radius': no such column (named by data.schema.features)"),
        "{}",
        f.log("join4.log")
    );
    assert!(f.wait(s, Duration::from_secs(300)), "{}", f.log("serve.log"));
    for i in 1..=3 {
        assert!(f.wait(i, Duration::from_secs(30)), "{}", f.log(&format!("join{i}.log")));
    }
    let rounds = f.rounds();
    assert_eq!(rounds.len(), 3);
    assert!(rounds.iter().all(|r| r["failures"].as_array().unwrap().is_empty()), "{rounds:?}");
    assert!(rounds[2]["metrics"]["auc"].as_f64().unwrap() > 0.95, "{:?}", rounds[2]);
    assert!(f.log("serve.log").contains("round 0:"), "{}", f.log("serve.log"));
    let pre = std::fs::read_to_string(f.path().join("srv/preprocessing.json")).unwrap();
    assert!(pre.contains("\"mean_radius\""), "{pre}");
    // The same federation simulated from the same files gives the same model, bit for bit.
    assert_eq!(f.model(), f.simulate(), "deployment and simulation differ");
}
