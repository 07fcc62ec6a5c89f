//! Certificates and TLS: `generate` makes a CA, a server certificate and one certificate per
//! party (rcgen); `server_config` builds a rustls server that requires a client certificate
//! signed by the CA (mutual TLS); `party_identity_ok` checks that a party's certificate names
//! the identity it claims.
//!
//! Layout written by `generate` (and expected by `federate serve` / `federate join`):
//! `ca.pem`, `ca.key`, `server.pem`, `server.key`, `parties/<id>.pem`, `parties/<id>.key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A TLS setup problem.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file without what it should hold.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Files that would be replaced.
    #[error("{0}")]
    Exists(String),
    /// A party identity that cannot be a certificate name.
    #[error("party identity '{0}' must be letters, digits, '-' or '.', starting with a letter or digit")]
    BadIdentity(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// Whether `id` can serve as a party identity (a DNS-style name in its certificate).
pub fn valid_identity(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && ServerName::try_from(id.to_string()).is_ok()
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

/// Writes a private key readable by its owner only (0600 on Unix), refusing to replace one.
fn write_key(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// How long certificates are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Days a party or server certificate is valid from today.
    pub leaf_days: u32,
    /// Days the CA is valid from today.
    pub ca_days: u32,
}

impl Default for Lifetime {
    /// One year for parties and the server, ten for the CA.
    fn default() -> Self {
        Lifetime { leaf_days: 365, ca_days: 3650 }
    }
}

/// The UTC calendar date `days` days from today (negative: before), for certificate validity.
fn ymd_from_today(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Howard Hinnant's civil-from-days.
    let z = (now / 86_400) as i64 + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Sets `params` valid from yesterday (clocks differ) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let (y, m, d) = ymd_from_today(-1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd_from_today(i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The CA's parameters; rebuilt identically to sign with an existing CA key (`add`).
fn ca_params(lifetime: Lifetime) -> Result<CertificateParams, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "federate CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut ca_params, lifetime.ca_days);
    Ok(ca_params)
}

fn leaf(
    names: Vec<String>,
    cn: &str,
    eku: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
    lifetime: Lifetime,
) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(names).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![eku];
    set_validity(&mut params, lifetime.leaf_days);
    let cert = params.signed_by(&key, issuer).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn check_new_parties(dir: &Path, parties: &[String]) -> Result<(), TlsError> {
    for p in parties {
        if !valid_identity(p) {
            return Err(TlsError::BadIdentity(p.clone()));
        }
        for ext in ["pem", "key"] {
            let path = dir.join("parties").join(format!("{p}.{ext}"));
            if path.exists() {
                return Err(TlsError::Exists(format!(
                    "{}: party '{p}' already has a certificate; choose another identity, or move the old files away \
                     first (its old certificate stays valid until it expires)",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

fn write_parties(
    dir: &Path,
    parties: &[String],
    issuer: &Issuer<'_, KeyPair>,
    lifetime: Lifetime,
) -> Result<(), TlsError> {
    for p in parties {
        let (cert, key) = leaf(vec![p.clone()], p, ExtendedKeyUsagePurpose::ClientAuth, issuer, lifetime)?;
        write_key(&dir.join("parties").join(format!("{p}.key")), &key)?;
        write(&dir.join("parties").join(format!("{p}.pem")), &cert)?;
    }
    Ok(())
}

/// Creates a CA, a server certificate valid for `server_names`, and a client certificate per
/// party, under `dir`. Refuses a directory that already holds a CA (replacing it would
/// invalidate every certificate it issued): add parties to it with [`add`]. Private keys are
/// written 0600.
pub fn generate(dir: &Path, server_names: &[String], parties: &[String], lifetime: Lifetime) -> Result<(), TlsError> {
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        if dir.join(f).exists() {
            return Err(TlsError::Exists(format!(
                "{} already exists: replacing the CA would invalidate every certificate it issued. Add parties to \
                 it with `federate keys --add`, or choose another --out",
                dir.join(f).display()
            )));
        }
    }
    check_new_parties(dir, parties)?;
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let params = ca_params(lifetime)?;
    let ca_cert = params.self_signed(&ca_key).map_err(gen_err)?;
    write_key(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    write(&dir.join("ca.pem"), &ca_cert.pem())?;
    let issuer = Issuer::new(params, ca_key);
    let (cert, key) =
        leaf(server_names.to_vec(), "federate server", ExtendedKeyUsagePurpose::ServerAuth, &issuer, lifetime)?;
    write_key(&dir.join("server.key"), &key)?;
    write(&dir.join("server.pem"), &cert)?;
    write_parties(dir, parties, &issuer, lifetime)
}

/// Issues certificates for `parties` with the existing CA in `dir` (its `ca.key`), leaving
/// everything already issued valid. Refuses an identity that already has files.
pub fn add(dir: &Path, parties: &[String], lifetime: Lifetime) -> Result<(), TlsError> {
    let key_path = dir.join("ca.key");
    let text = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let ca_key = KeyPair::from_pem(&text)
        .map_err(|e| TlsError::Pem { path: key_path.clone(), what: format!("not a CA key: {e}") })?;
    check_new_parties(dir, parties)?;
    let issuer = Issuer::new(ca_params(lifetime)?, ca_key);
    write_parties(dir, parties, &issuer, lifetime)
}

/// On a party: makes its private key (`dir/parties/<id>.key`, 0600) and a certificate
/// signing request for `id` (`dir/<id>.csr`), so the key never leaves the party. Returns the
/// request's path.
pub fn request(dir: &Path, id: &str) -> Result<PathBuf, TlsError> {
    if !valid_identity(id) {
        return Err(TlsError::BadIdentity(id.to_string()));
    }
    let key_path = dir.join("parties").join(format!("{id}.key"));
    let csr_path = dir.join(format!("{id}.csr"));
    for p in [&key_path, &csr_path] {
        if p.exists() {
            return Err(TlsError::Exists(format!("{} already exists; move it away first", p.display())));
        }
    }
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(vec![id.to_string()]).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, id);
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    write_key(&key_path, &key.serialize_pem())?;
    write(&csr_path, &csr.pem().map_err(gen_err)?)?;
    Ok(csr_path)
}

/// On the CA: signs the request in `csr` for party `id` with the CA in `dir` (writes
/// `dir/parties/<id>.pem`; the party keeps its key). The request's signature proves the
/// party holds the key; the certificate is made from the CA's own settings (client use only,
/// `lifetime`), and the request must be for `id` and nothing else.
pub fn sign(dir: &Path, csr: &Path, id: &str, lifetime: Lifetime) -> Result<PathBuf, TlsError> {
    if !valid_identity(id) {
        return Err(TlsError::BadIdentity(id.to_string()));
    }
    let out = dir.join("parties").join(format!("{id}.pem"));
    if out.exists() {
        return Err(TlsError::Exists(format!("{}: party '{id}' already has a certificate", out.display())));
    }
    let meta = std::fs::metadata(csr).map_err(io(csr))?;
    if meta.len() > 64 << 10 {
        return Err(TlsError::Pem { path: csr.into(), what: "too large for a certificate request".into() });
    }
    let text = std::fs::read_to_string(csr).map_err(io(csr))?;
    let req = rcgen::CertificateSigningRequestParams::from_pem(&text)
        .map_err(|e| TlsError::Pem { path: csr.into(), what: format!("not a valid certificate request: {e}") })?;
    let names: Vec<String> = req
        .params
        .subject_alt_names
        .iter()
        .map(|n| match n {
            rcgen::SanType::DnsName(d) => d.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    if names != [id.to_string()] {
        return Err(TlsError::Pem {
            path: csr.into(),
            what: format!("the request is for {names:?}, not for party '{id}' alone: refused"),
        });
    }
    let key_path = dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&key_path).map_err(io(&key_path))?)
        .map_err(|e| TlsError::Pem { path: key_path.clone(), what: format!("not a CA key: {e}") })?;
    let issuer = Issuer::new(ca_params(lifetime)?, ca_key);
    let mut params = CertificateParams::new(vec![id.to_string()]).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, id);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    set_validity(&mut params, lifetime.leaf_days);
    let cert = params.signed_by(&req.public_key, &issuer).map_err(gen_err)?;
    write(&out, &cert.pem())?;
    Ok(out)
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &bytes[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), what: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.into(), what: "no certificate found".into() });
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    rustls_pemfile::private_key(&mut &bytes[..])
        .map_err(|e| TlsError::Pem { path: path.into(), what: e.to_string() })?
        .ok_or_else(|| TlsError::Pem { path: path.into(), what: "no private key found".into() })
}

/// Files of one side's TLS setup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate that signs the other side.
    pub ca: PathBuf,
    /// This side's certificate.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

/// A rustls server configuration requiring client certificates signed by the CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&files.ca)? {
        roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", files.ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", files.cert.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether the (already chain-verified) end-entity certificate `cert` is valid for `id`.
pub fn party_identity_ok(cert: &CertificateDer<'_>, id: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(id.to_string()) else { return false };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_name_their_parties() {
        let tmp = std::env::temp_dir().join(format!("federate-tls-{}", std::process::id()));
        let dir = tmp.join("keys");
        generate(&dir, &["localhost".into()], &["party-1".into(), "party-2".into()], Lifetime::default()).unwrap();
        let c1 = read_certs(&dir.join("parties/party-1.pem")).unwrap();
        assert!(party_identity_ok(&c1[0], "party-1"));
        assert!(!party_identity_ok(&c1[0], "party-2"));
        server_config(&TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") })
            .unwrap();
        let other = tmp.join("other");
        assert!(matches!(
            generate(&other, &[], &["bad id".into()], Lifetime::default()),
            Err(TlsError::BadIdentity(_))
        ));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// Whether `cert` verifies against the CA in `ca` as a client certificate, now.
    fn verifies(ca: &Path, cert: &Path) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(ca).unwrap() {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let ee = read_certs(cert).unwrap().remove(0);
        v.verify_client_cert(&ee, &[], rustls::pki_types::UnixTime::now()).is_ok()
    }

    #[test]
    fn an_existing_ca_is_never_replaced_and_added_parties_share_it() {
        let tmp = std::env::temp_dir().join(format!("federate-tls-add-{}", std::process::id()));
        let dir = tmp.join("keys");
        generate(&dir, &["localhost".into()], &["party-1".into()], Lifetime::default()).unwrap();
        let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
        let e = generate(&dir, &["localhost".into()], &["party-9".into()], Lifetime::default()).unwrap_err();
        assert!(e.to_string().contains("federate keys --add"), "{e}");
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before, "the CA is untouched");
        add(&dir, &["party-4".into()], Lifetime { leaf_days: 30, ca_days: 3650 }).unwrap();
        assert!(verifies(&dir.join("ca.pem"), &dir.join("parties/party-4.pem")));
        assert!(verifies(&dir.join("ca.pem"), &dir.join("parties/party-1.pem")));
        assert!(party_identity_ok(&read_certs(&dir.join("parties/party-4.pem")).unwrap()[0], "party-4"));
        // An identity that has files already is refused, not overwritten.
        assert!(matches!(add(&dir, &["party-1".into()], Lifetime::default()), Err(TlsError::Exists(_))));
        // A certificate from another CA does not verify against this one.
        let other = tmp.join("other");
        generate(&other, &["localhost".into()], &["party-1".into()], Lifetime::default()).unwrap();
        assert!(!verifies(&dir.join("ca.pem"), &other.join("parties/party-1.pem")));
        #[cfg(unix)]
        for key in ["ca.key", "server.key", "parties/party-1.key", "parties/party-4.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn a_key_made_on_the_party_is_signed_by_the_ca() {
        let tmp = std::env::temp_dir().join(format!("federate-tls-csr-{}", std::process::id()));
        let (ca, party) = (tmp.join("ca"), tmp.join("party"));
        generate(&ca, &["localhost".into()], &[], Lifetime::default()).unwrap();
        let csr = request(&party, "party-7").unwrap();
        let cert = sign(&ca, &csr, "party-7", Lifetime::default()).unwrap();
        assert!(verifies(&ca.join("ca.pem"), &cert));
        assert!(party_identity_ok(&read_certs(&cert).unwrap()[0], "party-7"));
        assert!(!ca.join("parties/party-7.key").exists(), "the key stays on the party");
        // A request for another identity is refused; a garbled one too.
        let e = sign(&ca, &csr, "party-8", Lifetime::default()).unwrap_err();
        assert!(e.to_string().contains("not for party 'party-8'"), "{e}");
        std::fs::write(
            tmp.join("bad.csr"),
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        )
        .unwrap();
        assert!(sign(&ca, &tmp.join("bad.csr"), "party-9", Lifetime::default()).is_err());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
