//! The three sources of routes: container labels, the `DOMAINS`/`SERVICES` env vars and JSON files.
//! Each yields a [`SourceOutput`]; `routes::RouteTable::build` merges them in precedence order.

pub mod docker;
pub mod env;
pub mod file;
pub mod labels;

use std::path::PathBuf;

use crate::routes::SourceOutput;

/// The seed-era (static) configuration: env vars and files.
#[derive(Debug, Clone, Default)]
pub struct StaticConfig {
    pub domains: Option<String>,
    pub services: Option<String>,
    pub config_file: Option<PathBuf>,
    pub domains_config: Option<PathBuf>,
    pub services_config: Option<PathBuf>,
}

impl StaticConfig {
    /// Env first, then `CONFIG_FILE`, then `SERVICES_CONFIG` and `DOMAINS_CONFIG`.
    pub fn load(&self) -> SourceOutput {
        let mut out = env::parse(self.domains.as_deref(), self.services.as_deref());
        let files = [
            (&self.config_file, file::FileKind::Combined),
            (&self.services_config, file::FileKind::Services),
            (&self.domains_config, file::FileKind::Domains),
        ];
        for (path, kind) in files {
            if let Some(path) = path {
                out.extend(file::load(path, kind));
            }
        }
        out
    }
}
