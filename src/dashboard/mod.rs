//! What the status endpoint shows a person: the dashboard on `/` (an HTML page, its script and
//! style, compiled into the binary), who may read the endpoint ([`auth`]: `STATUS_TOKEN`) and the
//! recent decisions ([`events`], `/events`).
//!
//! The page holds no data: its script reads `/routes`, `/certs`, `/events` and `/insight` with
//! `fetch()` every 5 s (with the cookie of its login form when a token is required) and draws
//! them; a missing endpoint (an older agent without `/insight`) leaves its section empty. So the
//! page, its script and its style are served to anyone the guard lets reach `/`; with a token, that
//! is anyone, so that the login form can show; every data path needs the token.

pub mod auth;
pub mod events;

/// The page, its script and its style.
pub const INDEX_HTML: &str = include_str!("index.html");
pub const SCRIPT: &str = include_str!("dashboard.js");
pub const STYLE: &str = include_str!("dashboard.css");

/// Paths served without the token when one is required: the static page (it holds no data) and
/// `/login`, which checks the bearer itself.
pub const PUBLIC_PATHS: [&str; 4] = ["/", "/dashboard.js", "/dashboard.css", "/login"];

/// The Content-Security-Policy of the page: its own script, style and fetches only.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The `/certs` document: `{"certificates": [...]}` as `certs list --format json` shows each
/// (domain, issuer, expiry, days left, status, last error, next try): no key, no setting.
pub fn certs_json(rows: &[crate::certs::store::CertStatus]) -> String {
    #[derive(serde::Serialize)]
    struct View<'a> {
        certificates: &'a [crate::certs::store::CertStatus],
    }
    serde_json::to_string_pretty(&View { certificates: rows }).expect("the certificate rows serialize") + "\n"
}
