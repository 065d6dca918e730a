//! Credentials: a scoped API token (preferred) or the seed's email + global API key, from the
//! environment or Docker secret files; checked so that none can break a request header.

use super::*;

/// How the client authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A scoped API token (recommended): sent as `Authorization: Bearer`.
    Token(Secret),
    /// The account email and its Global API Key: sent as `X-Auth-Email` and `X-Auth-Key`.
    Key { email: String, key: Secret },
}

impl Credentials {
    /// Credentials from the settings `CLOUDFLARE_API_TOKEN` / `CLOUDFLARE_API_TOKEN_FILE`, or
    /// `CLOUDFLARE_EMAIL` with `CLOUDFLARE_API_KEY` / `CLOUDFLARE_API_KEY_FILE`. The `*_FILE`
    /// variants name a file (a Docker secret) holding the value; surrounding whitespace, such as
    /// the trailing newline, is trimmed. Empty values count as unset.
    ///
    /// `Ok(None)` when nothing is set. Errors name the variables involved, never a value.
    pub fn from_values(
        token: Option<&str>,
        token_file: Option<&Path>,
        email: Option<&str>,
        key: Option<&str>,
        key_file: Option<&Path>,
    ) -> Result<Option<Credentials>, CloudflareError> {
        let token = given(token);
        let token_file = token_file.filter(|p| !p.as_os_str().is_empty());
        let email = given(email);
        let key = given(key);
        let key_file = key_file.filter(|p| !p.as_os_str().is_empty());

        if token.is_some() && token_file.is_some() {
            return Err(CloudflareError::BothSet { first: TOKEN_VAR, second: TOKEN_FILE_VAR });
        }
        if key.is_some() && key_file.is_some() {
            return Err(CloudflareError::BothSet { first: KEY_VAR, second: KEY_FILE_VAR });
        }
        let has_token = token.is_some() || token_file.is_some();
        let key_var = if key_file.is_some() { KEY_FILE_VAR } else { KEY_VAR };
        let has_key = key.is_some() || key_file.is_some();
        if has_token && (has_key || email.is_some()) {
            return Err(CloudflareError::MixedCredentials);
        }
        match (has_key, email) {
            (true, None) => return Err(CloudflareError::MissingPair { set: key_var, missing: EMAIL_VAR }),
            (false, Some(_)) => {
                return Err(CloudflareError::MissingPair {
                    set: EMAIL_VAR,
                    missing: "CLOUDFLARE_API_KEY (or CLOUDFLARE_API_KEY_FILE)",
                })
            }
            _ => {}
        }

        if has_token {
            let value = match (token, token_file) {
                (Some(value), _) => value.to_string(),
                (None, Some(path)) => read_secret_file(TOKEN_FILE_VAR, path)?,
                (None, None) => unreachable!("has_token"),
            };
            let variable = if token_file.is_some() { TOKEN_FILE_VAR } else { TOKEN_VAR };
            check_header_safe(variable, &value)?;
            return Ok(Some(Credentials::Token(Secret::new(value))));
        }
        if let Some(email) = email {
            let value = match (key, key_file) {
                (Some(value), _) => value.to_string(),
                (None, Some(path)) => read_secret_file(KEY_FILE_VAR, path)?,
                (None, None) => unreachable!("has_key"),
            };
            check_header_safe(key_var, &value)?;
            if !email.contains('@') || !email.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CloudflareError::InvalidValue {
                    variable: EMAIL_VAR.into(),
                    reason: "it is not an email address (the Cloudflare account's login email)".into(),
                });
            }
            return Ok(Some(Credentials::Key { email: email.to_string(), key: Secret::new(value) }));
        }
        Ok(None)
    }

    /// The secret inside, for redaction.
    pub(super) fn secret(&self) -> &Secret {
        match self {
            Credentials::Token(token) => token,
            Credentials::Key { key, .. } => key,
        }
    }

    pub(super) fn headers(&self) -> Result<HeaderMap, CloudflareError> {
        let invalid = |what: &str| CloudflareError::InvalidValue {
            variable: what.into(),
            reason: "it contains characters that cannot be sent in an HTTP header".into(),
        };
        let mut headers = HeaderMap::new();
        match self {
            Credentials::Token(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| invalid("the API token"))?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            Credentials::Key { email, key } => {
                let email = HeaderValue::from_str(email).map_err(|_| invalid("the account email"))?;
                let mut key = HeaderValue::from_str(key.expose()).map_err(|_| invalid("the Global API Key"))?;
                key.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-auth-email"), email);
                headers.insert(HeaderName::from_static("x-auth-key"), key);
            }
        }
        Ok(headers)
    }

    /// What to check when Cloudflare rejects these credentials.
    pub(super) fn auth_hint(&self) -> &'static str {
        match self {
            Credentials::Token(_) => {
                "the API token is invalid or expired, or lacks the Zone:DNS:Edit permission for this zone; \
                 create a token with Zone:Zone:Read and Zone:DNS:Edit for the zone and set it in CLOUDFLARE_API_TOKEN"
            }
            Credentials::Key { .. } => {
                "CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY do not match a Cloudflare account (the key must be that account's \
                 Global API Key), or the account cannot edit DNS in this zone"
            }
        }
    }
}

pub(super) fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

pub(super) fn read_secret_file(variable: &'static str, path: &Path) -> Result<String, CloudflareError> {
    let text = std::fs::read_to_string(path).map_err(|reason| CloudflareError::ReadSecretFile {
        variable,
        path: path.to_path_buf(),
        reason,
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(CloudflareError::EmptySecretFile { variable, path: path.to_path_buf() });
    }
    Ok(value.to_string())
}

pub(super) fn check_header_safe(variable: &str, value: &str) -> Result<(), CloudflareError> {
    if value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(CloudflareError::InvalidValue {
            variable: variable.into(),
            reason: "it contains spaces, control characters or non-ASCII characters; paste the value exactly as Cloudflare shows it"
                .into(),
        })
    }
}
