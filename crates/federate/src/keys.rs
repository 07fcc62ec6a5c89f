//! `federate keys`: certificates for a federation (a CA, the server's, one per party), more
//! parties from an existing CA, and a party's own key and certificate request.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// What `federate keys` does.
pub enum KeysMode {
    /// A new CA, server certificate and party certificates.
    New,
    /// More party certificates from the CA already there.
    Add,
    /// On a party: its key and a certificate request.
    Request,
    /// On the CA: sign a party's request.
    Sign(PathBuf),
}

/// `federate keys`: a CA, a server certificate and one certificate per party, valid `days`
/// days (the CA ten times as long); or more parties from an existing CA; or a party's own key
/// and certificate request, and the CA's signature on it.
pub fn keys(out: &Path, parties: &[String], server_names: &[String], how: KeysMode, days: u32) -> Result<()> {
    let lifetime = federate_net::tls::Lifetime { leaf_days: days, ca_days: days.saturating_mul(10) };
    let one = || match parties {
        [id] => Ok(id.as_str()),
        _ => Err(anyhow::anyhow!("--csr and --sign take exactly one identity in --parties, got {}", parties.len())),
    };
    match how {
        KeysMode::New => {}
        KeysMode::Add => {
            federate_net::tls::add(out, parties, lifetime)?;
            println!(
                "signed {} with the CA in {}: wrote {}/parties/<id>.pem and .key (valid {days} days)",
                parties.join(", "),
                out.display(),
                out.display()
            );
            return Ok(());
        }
        KeysMode::Request => {
            let id = one()?;
            let csr = federate_net::tls::request(out, id)?;
            println!(
                "wrote the private key {}/parties/{id}.key (keep it here) and the request {}: send the request to \
                 the CA's operator (`federate keys --sign {id}.csr --parties {id}`), then put the returned \
                 {id}.pem in {}/parties/ and the federation's ca.pem in {}",
                out.display(),
                csr.display(),
                out.display(),
                out.display()
            );
            return Ok(());
        }
        KeysMode::Sign(csr) => {
            let id = one()?;
            let cert = federate_net::tls::sign(out, &csr, id, lifetime)?;
            println!(
                "signed the request of '{id}': wrote {} (valid {days} days); send it and {}/ca.pem to the party",
                cert.display(),
                out.display()
            );
            return Ok(());
        }
    }
    federate_net::tls::generate(out, server_names, parties, lifetime)?;
    println!(
        "wrote {0}/ca.pem, {0}/server.pem and .key, and {0}/parties/<id>.pem and .key for {1} (valid {days} days; \
         private keys readable by you only)",
        out.display(),
        parties.join(", ")
    );
    println!("keep ca.key offline; give each party ca.pem plus its own .pem and .key");
    Ok(())
}
