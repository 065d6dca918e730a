//! Self-signed placeholder certificates at certbot's paths, so nginx always loads.
//!
//! A placeholder never replaces an existing certificate: it is written only where
//! `live/<domain>/fullchain.pem` or `privkey.pem` is missing.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::certs::layout::Layout;
use crate::fsutil::write_atomic;
use crate::routes::{DomainName, RouteTable, TlsMode};

/// The organisation name that marks a placeholder (the certificate code recognises it by this).
pub const PLACEHOLDER_ORG: &str = "nginx-smart-proxy placeholder";
/// Placeholders are short-lived on purpose: they only bridge the time until issuance.
pub const PLACEHOLDER_DAYS: i64 = 7;

#[derive(Debug, Error)]
pub enum PlaceholderError {
    #[error("cannot write the placeholder certificate for {domain} in {dir}: {source}")]
    Io {
        domain: DomainName,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a placeholder certificate for {domain}: {message}")]
    Generate { domain: DomainName, message: String },
}

/// TLS domains of the table that have no certificate yet.
pub fn missing(certs_dir: &Path, table: &RouteTable) -> Vec<DomainName> {
    table
        .sites
        .iter()
        .filter(|site| site.tls == TlsMode::Auto)
        .filter(|site| {
            let layout = Layout::new(certs_dir);
            !(layout.fullchain(&site.domain).is_file() && layout.privkey(&site.domain).is_file())
        })
        .map(|site| site.domain.clone())
        .collect()
}

/// Writes a placeholder for `domain` (key 0600, written before the certificate).
pub fn write(certs_dir: &Path, domain: &DomainName) -> Result<(), PlaceholderError> {
    let layout = Layout::new(certs_dir);
    let dir = layout.live_dir(domain);
    let io = |source| PlaceholderError::Io { domain: domain.clone(), dir: dir.clone(), source };
    let generate = |e: rcgen::Error| PlaceholderError::Generate { domain: domain.clone(), message: e.to_string() };
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(generate)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(PLACEHOLDER_DAYS);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, PLACEHOLDER_ORG);
    params.distinguished_name.push(rcgen::DnType::CommonName, domain.to_string());
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    std::fs::create_dir_all(&dir).map_err(io)?;
    write_atomic(&layout.privkey(domain), key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
    write_atomic(&layout.fullchain(domain), cert.pem().as_bytes(), 0o644).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_parseable_short_lived_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let domain = DomainName::parse("*.example.com").unwrap();
        write(dir.path(), &domain).unwrap();
        let live = dir.path().join("live/_.example.com");
        let key_mode = std::fs::metadata(live.join("privkey.pem")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let pem = std::fs::read(live.join("fullchain.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(cert.subject().to_string().contains(PLACEHOLDER_ORG));
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
        assert_eq!(days, PLACEHOLDER_DAYS);
    }
}
