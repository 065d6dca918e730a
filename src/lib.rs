//! nginx-smart-proxy: routes from Docker labels, env vars and JSON files, rendered into an nginx
//! config that always loads. See ARCHITECTURE.md for the map and the invariants.
//!
//! Data flow: `sources` → `routes` (validated, merged) → `render` → apply; `certs` alongside.

pub mod agent;
pub mod apply;
pub mod backoff;
pub mod certs;
pub mod cli;
pub mod config;
pub mod fsutil;
pub mod metrics;
pub mod pipeline;
pub mod render;
pub mod report;
pub mod routes;
pub mod secret;
pub mod settings;
pub mod sources;
pub mod status;
