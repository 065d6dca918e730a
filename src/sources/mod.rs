//! The three sources of routes: container labels, the `DOMAINS`/`SERVICES` env vars and JSON files.
//! Each yields a [`SourceOutput`]; `routes::RouteTable::build` merges them in precedence order.

pub mod config_schema;
pub mod docker;
pub mod env;
pub mod file;
pub mod label_schema;
pub mod labels;
pub mod swarm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::routes::{Diagnostic, Origin, SourceOutput};

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
        StaticState::default().load(self)
    }

    /// The files, for the watcher.
    pub fn files(&self) -> Vec<&Path> {
        self.files_with_kind().into_iter().map(|(p, _)| p).collect()
    }

    fn files_with_kind(&self) -> Vec<(&Path, file::FileKind)> {
        [
            (&self.config_file, file::FileKind::Combined),
            (&self.services_config, file::FileKind::Services),
            (&self.domains_config, file::FileKind::Domains),
        ]
        .into_iter()
        .filter_map(|(path, kind)| path.as_deref().map(|p| (p, kind)))
        .collect()
    }
}

/// Remembers the last good version of each file, so that an edit that breaks a whole file (a JSON
/// syntax error, a file replaced half-written) keeps its routes instead of dropping them all.
#[derive(Debug, Default)]
pub struct StaticState {
    last_good: HashMap<PathBuf, SourceOutput>,
}

impl StaticState {
    pub fn load(&mut self, config: &StaticConfig) -> SourceOutput {
        let mut out = env::parse(config.domains.as_deref(), config.services.as_deref());
        for (path, kind) in config.files_with_kind() {
            let fresh = file::load(path, kind);
            if !fresh.diagnostics.iter().any(file::is_whole_file_error) {
                self.last_good.insert(path.to_path_buf(), fresh.clone());
                out.extend(fresh);
                continue;
            }
            match self.last_good.get(path) {
                Some(previous) => {
                    out.routes.extend(previous.routes.clone());
                    out.services.extend(previous.services.clone());
                    out.diagnostics.extend(fresh.diagnostics);
                    out.diagnostics.push(Diagnostic::warning(
                        Origin::File { path: path.to_path_buf(), field: file::WHOLE_FILE.into() },
                        "keeping the routes of the last good version of this file until it is fixed",
                    ));
                }
                None => out.extend(fresh),
            }
        }
        out
    }
}
