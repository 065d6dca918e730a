//! The journal of an order in progress (its URL, then the key of its CSR), 0600 under the
//! store's `pending/`, so that a restarted agent resumes the order instead of placing another.

use super::*;

/// The journal of an order in progress.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Journal {
    pub(super) order: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) key_pem: Option<String>,
}

pub(super) fn journal_path(dir: &Path, domain: &DomainName) -> PathBuf {
    crate::certs::layout::journal_file(dir, domain)
}

pub(super) fn write_journal(dir: &Path, domain: &DomainName, order: &str, key_pem: &Secret) -> Result<(), AcmeError> {
    let path = journal_path(dir, domain);
    let err = |action, source| AcmeError::Journal { domain: domain.clone(), action, path: path.clone(), source };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err("create the directory of", e))?;
    let journal = Journal { order: order.to_string(), key_pem: Some(key_pem.expose().to_string()) };
    let json = serde_json::to_vec(&journal).expect("the journal serializes");
    write_atomic(&path, &json, 0o600).map_err(|e| err("write", e))
}

pub(super) fn read_journal(dir: &Path, domain: &DomainName) -> Option<Journal> {
    // An unreadable journal is an order we cannot resume: a new order replaces it.
    serde_json::from_slice(&std::fs::read(journal_path(dir, domain)).ok()?).ok()
}

/// Removes the journal of `domain`'s order (after its certificate is written, or when the order
/// is dead).
pub fn clear_journal(dir: &Path, domain: &DomainName) {
    let _ = std::fs::remove_file(journal_path(dir, domain));
}
