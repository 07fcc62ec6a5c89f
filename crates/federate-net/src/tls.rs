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

/// Creates a CA, a server certificate valid for `server_names`, and a client certificate per
/// party, under `dir`.
pub fn generate(dir: &Path, server_names: &[String], parties: &[String]) -> Result<(), TlsError> {
    for p in parties {
        if !valid_identity(p) {
            return Err(TlsError::BadIdentity(p.clone()));
        }
    }
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "federate CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    write(&dir.join("ca.pem"), &ca_cert.pem())?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(names).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (cert, key) = leaf(server_names.to_vec(), "federate server", ExtendedKeyUsagePurpose::ServerAuth)?;
    write(&dir.join("server.pem"), &cert)?;
    write(&dir.join("server.key"), &key)?;
    for p in parties {
        let (cert, key) = leaf(vec![p.clone()], p, ExtendedKeyUsagePurpose::ClientAuth)?;
        write(&dir.join("parties").join(format!("{p}.pem")), &cert)?;
        write(&dir.join("parties").join(format!("{p}.key")), &key)?;
    }
    Ok(())
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
        let dir = std::env::temp_dir().join(format!("federate-tls-{}", std::process::id()));
        generate(&dir, &["localhost".into()], &["party-1".into(), "party-2".into()]).unwrap();
        let c1 = read_certs(&dir.join("parties/party-1.pem")).unwrap();
        assert!(party_identity_ok(&c1[0], "party-1"));
        assert!(!party_identity_ok(&c1[0], "party-2"));
        server_config(&TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") })
            .unwrap();
        assert!(matches!(generate(&dir, &[], &["bad id".into()]), Err(TlsError::BadIdentity(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
