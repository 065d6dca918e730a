//! Certificates: self-signed placeholders that let nginx load a TLS server before its real
//! certificate exists, the store (certbot's layout plus renewal state and locks), and the plan of
//! which domains to order. ACME and the DNS provider do the IO.

pub mod acme;
pub mod cloudflare;
pub mod dns;
pub mod layout;
pub mod manager;
pub mod placeholder;
pub mod plan;
pub mod public_ip;
pub mod store;
