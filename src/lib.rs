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
pub mod dashboard;
pub mod follow;
pub mod fsutil;
pub mod insight;
pub mod metrics;
pub mod pipeline;
pub mod render;
pub mod report;
pub mod routes;
pub mod secret;
pub mod settings;
pub mod sources;
pub mod status;
pub mod top;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules each one names (`crate::x`), outside its tests.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String =
                    code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module {
                    graph.entry(module.clone()).or_default().insert(name);
                }
            }
        }
        graph
    }

    #[test]
    fn no_two_top_level_modules_import_each_other() {
        let graph = imports();
        assert!(graph.get("agent").is_some_and(|a| a.contains("apply")), "the scan finds imports: {graph:?}");
        let circles: Vec<(&String, &String)> = graph
            .iter()
            .flat_map(|(a, names)| names.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a < b && graph.get(*b).is_some_and(|n| n.contains(*a)))
            .collect();
        assert!(circles.is_empty(), "modules importing each other: {circles:?}");
    }
}
