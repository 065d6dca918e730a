//! ACME accounts: registered once per directory URL and email, their credentials kept 0600
//! under the store's `accounts/` and restored from there.

use super::*;

/// An ACME account, registered once per directory URL and email and restored from disk after.
#[derive(Clone)]
pub struct Account {
    pub(super) inner: instant_acme::Account,
    directory: String,
    path: PathBuf,
    created: bool,
}

impl Account {
    /// The account URL at the CA.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    pub fn directory(&self) -> &str {
        &self.directory
    }

    /// The credentials file (0600).
    pub fn credentials_path(&self) -> &Path {
        &self.path
    }

    /// True when this call registered the account, false when it was restored from disk.
    pub fn created(&self) -> bool {
        self.created
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id())
            .field("directory", &self.directory)
            .field("credentials_path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The credentials file of the account for `directory` + `email`:
/// `<accounts_dir>/<stable hash>.json` ([`Layout::accounts_dir`](crate::certs::layout::Layout::accounts_dir)).
pub fn account_path(accounts_dir: &Path, directory: &str, email: Option<&str>) -> PathBuf {
    // FNV-1a: stable across Rust versions and runs, unlike std's hasher.
    let key = format!("{directory}\n{}", email.unwrap_or(""));
    let hash = key.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    accounts_dir.join(format!("{hash:016x}.json"))
}

/// The account for these settings: restored from `accounts_dir` when registered before,
/// otherwise registered now (terms of service agreed) and its credentials written there, 0600.
///
/// Call it once per settings (at startup), not concurrently: two concurrent first calls would
/// register two accounts.
pub async fn account(accounts_dir: &Path, settings: &AcmeSettings) -> Result<Account, AcmeError> {
    let directory = settings.directory_url()?;
    let email = settings.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
    let path = account_path(accounts_dir, &directory, email);
    let http = http_client(settings)?;
    with_capture(async move {
        let store_err = |action, source| AcmeError::AccountStore { action, path: path.clone(), source };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let credentials = parse_credentials(&path, &bytes, &directory)?;
                let inner = instant_acme::Account::builder_with_http(http)
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| match e {
                        instant_acme::Error::KeyRejected => AcmeError::AccountFile {
                            path: path.clone(),
                            reason: "its account key does not load".to_string(),
                        },
                        e => ca_error(format!("restore the ACME account of {}", path.display()), e),
                    })?;
                debug!(account = inner.id(), directory = %directory, "restored the ACME account");
                Ok(Account { inner, directory, path, created: false })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let eab = match &settings.eab {
                    Some((kid, hmac)) => Some(eab_key(kid, hmac)?),
                    None => None,
                };
                let contact = email.map(|email| format!("mailto:{email}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (inner, credentials) = instant_acme::Account::builder_with_http(http)
                    .create(&new, directory.clone(), eab.as_ref())
                    .await
                    .map_err(|e| ca_error(format!("register an ACME account at {directory}"), e))?;
                let json = serde_json::to_vec_pretty(&credentials)
                    .map_err(|e| store_err("serialize", io::Error::other(json_problem(&e))))?;
                let accounts = path.parent().expect("account path has a parent");
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(accounts)
                    .map_err(|e| store_err("create the directory of", e))?;
                write_atomic(&path, &json, 0o600).map_err(|e| store_err("write", e))?;
                info!(account = inner.id(), directory = %directory, "registered a new ACME account");
                Ok(Account { inner, directory, path, created: true })
            }
            Err(e) => Err(store_err("read", e)),
        }
    })
    .await
}

/// What is wrong with a JSON document, without quoting it (serde messages can quote values).
pub(super) fn json_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "not ACME account credentials",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    match e.line() {
        0 => what.to_string(),
        line => format!("{what} at line {line}, column {}", e.column()),
    }
}

/// Parses stored credentials. Errors name the position only: serde messages can quote values.
pub(super) fn parse_credentials(
    path: &Path,
    bytes: &[u8],
    directory: &str,
) -> Result<instant_acme::AccountCredentials, AcmeError> {
    let unusable = |reason: String| AcmeError::AccountFile { path: path.to_path_buf(), reason };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| unusable(json_problem(&e)))?;
    match value.get("directory").and_then(|d| d.as_str()) {
        Some(stored) if stored == directory => {}
        Some(stored) => return Err(unusable(format!("it belongs to the ACME directory {stored}, not {directory}"))),
        None => return Err(unusable("it names no ACME directory".to_string())),
    }
    serde_json::from_value(value).map_err(|e| unusable(json_problem(&e)))
}

pub(super) fn eab_key(kid: &str, hmac: &Secret) -> Result<ExternalAccountKey, AcmeError> {
    let encoded = hmac.expose().trim().trim_end_matches('=');
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| AcmeError::EabKey { kid: kid.to_string() })?;
    if key.is_empty() {
        return Err(AcmeError::EabKey { kid: kid.to_string() });
    }
    Ok(ExternalAccountKey::new(kid.to_string(), &key))
}

// --- Issuance
