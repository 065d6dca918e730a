//! The certificate of an order: its CSR with a fresh key, the checks of what the CA returned
//! (the chain names the domain, the key matches), and its writing in certbot's layout.

use super::*;

/// A CSR for `domain` signed with `key_pem`.
pub(super) fn csr_der(domain: &DomainName, key_pem: &Secret) -> Result<Vec<u8>, AcmeError> {
    let bad = |reason: String| AcmeError::BadCertificate { domain: domain.clone(), reason };
    let key = rcgen::KeyPair::from_pem(key_pem.expose()).map_err(|_| bad("the journaled key does not load".into()))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.as_str().to_string()])
        .map_err(|e| bad(format!("cannot build the CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| bad(format!("cannot sign the CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// The key belongs to the chain's leaf.
pub(super) fn check_key(domain: &DomainName, fullchain_pem: &str, key_pem: &Secret) -> Result<(), AcmeError> {
    use rcgen::PublicKeyData;
    let bad = |reason: &str| AcmeError::BadCertificate { domain: domain.clone(), reason: reason.to_string() };
    let key = rcgen::KeyPair::from_pem(key_pem.expose()).map_err(|_| bad("its private key does not load"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(fullchain_pem.as_bytes()).map_err(|_| bad("no PEM leaf"))?;
    let leaf = pem.parse_x509().map_err(|_| bad("the leaf does not parse"))?;
    if key.subject_public_key_info() != leaf.public_key().raw {
        return Err(bad("the leaf is not for the order's key"));
    }
    Ok(())
}

/// Checks that the chain's leaf names `domain`; returns its expiry.
pub(super) fn check_chain(domain: &DomainName, fullchain_pem: &str) -> Result<time::OffsetDateTime, AcmeError> {
    let bad = |reason: String| AcmeError::BadCertificate { domain: domain.clone(), reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(fullchain_pem.as_bytes())
        .map_err(|e| bad(format!("the chain does not start with a PEM certificate: {e}")))?;
    let leaf = pem.parse_x509().map_err(|e| bad(format!("the leaf certificate does not parse: {e}")))?;
    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(format!("its subject alternative names do not parse: {e}"))),
    };
    if !names.iter().any(|name| name == domain.as_str()) {
        return Err(bad(format!(
            "the leaf names {} instead",
            if names.is_empty() { "nothing".into() } else { names.join(", ") }
        )));
    }
    Ok(leaf.validity().not_after.to_datetime())
}

/// Writes `issued` in certbot's layout: `<certs_dir>/live/<cert name>/privkey.pem` (0600) and
/// `fullchain.pem` (0644), each atomically and both durable when this returns. Both files are
/// written and fsynced before either is renamed into place, the renames follow each other, and
/// the directory is fsynced once: nginx can only read a new key with the old chain during the
/// microseconds between the two renames. (After a crash between them, the order's journal,
/// removed only after this returns, makes the next run download the chain again and rewrite
/// both.) Blocking: call it from a blocking thread. Returns the directory.
pub fn write_certificate(certs_dir: &Path, domain: &DomainName, issued: &Issued) -> Result<PathBuf, AcmeError> {
    use std::ffi::OsStr;
    let layout = crate::certs::layout::Layout::new(certs_dir);
    let dir = layout.live_dir(domain);
    let io = |source| AcmeError::Write { domain: domain.clone(), dir: dir.clone(), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let files: [(&OsStr, &[u8], u32); 2] = [
        (OsStr::new(crate::certs::layout::PRIVKEY), issued.key_pem.expose().as_bytes(), 0o600),
        (OsStr::new(crate::certs::layout::FULLCHAIN), issued.fullchain_pem.as_bytes(), 0o644),
    ];
    write_atomic_many(&dir, &files).map_err(io)?;
    Ok(dir)
}
