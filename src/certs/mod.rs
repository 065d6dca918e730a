//! Certificates. Today: the self-signed placeholders that let nginx load a TLS server before its
//! real certificate exists. ACME issuance and renewal arrive here later.

pub mod placeholder;
