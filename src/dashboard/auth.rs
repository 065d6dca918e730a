//! Who may read the status endpoint: `STATUS_TOKEN` as a bearer token or as the dashboard's
//! cookie. `/healthz` is always open (Docker's HEALTHCHECK and `health` send no token).
//!
//! | STATUS_ADDR | STATUS_TOKEN | Every other path |
//! |---|---|---|
//! | loopback | unset | open |
//! | loopback | set | the token is required |
//! | other | set | the token is required |
//! | other | unset | refused (401 saying to set STATUS_TOKEN) |
//!
//! With a token, the dashboard's page, script and style and `/login` are served to anyone (they
//! hold no data; the page shows the login form); every data path needs the token.
//!
//! The cookie holds a digest of the token, not the token: a leaked cookie does not give away
//! what `top` and scrapers send. Both are compared in constant time (digests of equal length,
//! compared without an early exit).

use std::net::SocketAddr;

use http::HeaderMap;

use crate::secret::Secret;

/// The dashboard's cookie.
pub const COOKIE: &str = "smartproxy_status";

/// The access rule of one status endpoint.
#[derive(Clone)]
pub enum Guard {
    /// On loopback without a token.
    Open,
    /// Every path but `/healthz` needs the token (the bearer) or its cookie.
    Token { bearer: [u8; 32], cookie: String },
    /// Not on loopback and no token: every path but `/healthz` is refused.
    Refuse { addr: SocketAddr },
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guard::Open => "Open",
            Guard::Token { .. } => "Token([redacted])",
            Guard::Refuse { .. } => "Refuse",
        })
    }
}

/// Why a request is refused; the message is the 401's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "the status endpoint listens on {addr}, not a loopback address, and STATUS_TOKEN is unset: set STATUS_TOKEN \
         to read it from other hosts (or set STATUS_ADDR to 127.0.0.1:PORT); /healthz stays open"
    )]
    NoToken { addr: SocketAddr },
    #[error("this needs STATUS_TOKEN: send `Authorization: Bearer <token>`, or log in on the dashboard (/)")]
    Missing,
    #[error("wrong token: send `Authorization: Bearer <STATUS_TOKEN>`, or log in again on the dashboard (/)")]
    Wrong,
}

impl Guard {
    /// The rule for an endpoint on `addr` with `token` (an empty token counts as unset).
    pub fn new(addr: SocketAddr, token: Option<&Secret>) -> Guard {
        match token.filter(|t| !t.expose().is_empty()) {
            Some(token) => Guard::Token { bearer: digest(token.expose()), cookie: cookie_value(token.expose()) },
            None if addr.ip().is_loopback() => Guard::Open,
            None => Guard::Refuse { addr },
        }
    }

    /// `Ok` when `path` may be served to a request with these headers.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Denied> {
        if path == "/healthz" {
            return Ok(());
        }
        match self {
            Guard::Open => Ok(()),
            Guard::Refuse { addr } => Err(Denied::NoToken { addr: *addr }),
            Guard::Token { .. } if super::PUBLIC_PATHS.contains(&path) => Ok(()),
            Guard::Token { .. } => {
                let bearer = bearer(headers);
                let cookie = cookie(headers);
                if bearer.is_none() && cookie.is_none() {
                    return Err(Denied::Missing);
                }
                if self.accepts_bearer(bearer) || self.accepts_cookie(cookie) {
                    Ok(())
                } else {
                    Err(Denied::Wrong)
                }
            }
        }
    }

    /// True when `headers` carry the right bearer token (`GET /login` trades it for the cookie).
    pub fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        self.accepts_bearer(bearer(headers))
    }

    /// The `Set-Cookie` value a successful login answers with (`None` when no token is set).
    pub fn set_cookie(&self) -> Option<String> {
        match self {
            Guard::Token { cookie, .. } => {
                Some(format!("{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000"))
            }
            _ => None,
        }
    }

    fn accepts_bearer(&self, presented: Option<&str>) -> bool {
        match (self, presented) {
            (Guard::Token { bearer, .. }, Some(p)) => equal(&digest(p), bearer),
            _ => false,
        }
    }

    fn accepts_cookie(&self, presented: Option<&str>) -> bool {
        match (self, presented) {
            (Guard::Token { cookie, .. }, Some(p)) => equal(&digest(p), &digest(cookie)),
            _ => false,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn digest(value: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The cookie: a digest of the token under a fixed label, hex.
fn cookie_value(token: &str) -> String {
    digest(&format!("nginx-smart-proxy status cookie\0{token}")).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit.
fn equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_is_open_without_a_token_and_closed_with_one() {
        let addr: SocketAddr = "127.0.0.1:9180".parse().unwrap();
        assert!(matches!(Guard::new(addr, None), Guard::Open));
        assert!(matches!(Guard::new(addr, Some(&Secret::new(""))), Guard::Open));
        assert_eq!(Guard::new(addr, None).check("/routes", &headers(&[])), Ok(()));
        let guard = Guard::new(addr, Some(&Secret::new("s3cret")));
        assert_eq!(guard.check("/routes", &headers(&[])), Err(Denied::Missing));
        assert_eq!(guard.check("/healthz", &headers(&[])), Ok(()));
        // The page (no data) shows its login form to anyone.
        assert_eq!(guard.check("/", &headers(&[])), Ok(()));
        assert_eq!(guard.check("/insight", &headers(&[])), Err(Denied::Missing));
        assert_eq!(guard.check("/routes", &headers(&[("authorization", "Bearer s3cret")])), Ok(()));
        assert_eq!(guard.check("/routes", &headers(&[("authorization", "bearer  s3cret ")])), Ok(()));
        assert_eq!(guard.check("/routes", &headers(&[("authorization", "Bearer s3cre")])), Err(Denied::Wrong));
        assert_eq!(guard.check("/routes", &headers(&[("authorization", "Basic s3cret")])), Err(Denied::Missing));
        assert!(!format!("{guard:?}").contains("s3cret"));
    }

    #[test]
    fn elsewhere_without_a_token_everything_but_healthz_is_refused() {
        let addr: SocketAddr = "0.0.0.0:9180".parse().unwrap();
        let guard = Guard::new(addr, None);
        assert_eq!(guard.check("/healthz", &headers(&[])), Ok(()));
        let denied = guard.check("/", &headers(&[("authorization", "Bearer x")])).unwrap_err();
        assert_eq!(denied, Denied::NoToken { addr });
        assert!(denied.to_string().contains("set STATUS_TOKEN"), "{denied}");
        assert!(guard.set_cookie().is_none());
    }

    #[test]
    fn the_cookie_is_a_digest_of_the_token_and_opens_every_path() {
        let guard = Guard::new("[::]:9180".parse().unwrap(), Some(&Secret::new("s3cret")));
        let set = guard.set_cookie().unwrap();
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        assert!(!set.contains("s3cret"), "{set}");
        let value = set.split(';').next().unwrap();
        assert_eq!(guard.check("/insight", &headers(&[("cookie", &format!("a=b; {value}"))])), Ok(()));
        assert_eq!(guard.check("/insight", &headers(&[("cookie", "smartproxy_status=s3cret")])), Err(Denied::Wrong));
        assert!(guard.bearer_ok(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(!guard.bearer_ok(&headers(&[("cookie", value)])));
    }
}
