//! The README's "Policies" section as a user pastes it: each `yaml` block of labels is one
//! container, read the way Compose passes labels (`$$` is a literal `$`), and must give routes
//! without an error that render to a config the real `nginx -t` accepts.

use crate::support::{container, label_table, NginxSandbox};

/// The label lists of the section's `yaml` blocks, each as `(key, value)` pairs.
fn blocks() -> Vec<Vec<(String, String)>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("\n## Policies\n").expect("README has a Policies section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    for block in section.split("```yaml\n").skip(1) {
        let block = &block[..block.find("```").expect("the block ends")];
        let labels = block
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("- \""))
            .map(|l| {
                let item = &l[..l.find('"').expect("a quoted label")];
                let (key, value) = item.split_once('=').expect("key=value");
                (key.to_string(), value.replace("$$", "$"))
            })
            .collect::<Vec<_>>();
        assert!(!labels.is_empty(), "a block without labels:\n{block}");
        blocks.push(labels);
    }
    blocks
}

#[test]
fn every_policy_example_in_the_readme_loads() {
    let blocks = blocks();
    assert!(blocks.len() >= 6, "found {} blocks", blocks.len());
    let mut keys = std::collections::BTreeSet::new();
    for (i, labels) in blocks.iter().enumerate() {
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let table = label_table(&[container(&format!("example{i}"), [10, 0, 0, 10 + i as u8], &pairs)]);
        assert!(table.diagnostics.is_empty(), "README block {}: {:#?}", i + 1, table.diagnostics);
        NginxSandbox::new().render_and_test(&table, false);
        for (key, _) in labels {
            let key = key.trim_start_matches("smart-proxy.");
            // `<route>.<key>`: the key after a route name of the example's own.
            let key = match key.split_once('.') {
                Some((route, rest)) if ["php", "tls-app", "site", "team"].contains(&route) => rest,
                _ => key,
            };
            let key = if key.starts_with("headers.") { &key[..key.rfind('.').unwrap()] } else { key };
            keys.insert(key.to_string());
        }
    }
    // One example at least for each policy key.
    for key in [
        "max-body",
        "timeout",
        "buffering",
        "strip-prefix",
        "rate",
        "rate.burst",
        "rate.key",
        "headers.request",
        "headers.response",
        "auth",
        "auth.users",
        "auth.users-file",
        "auth.bypass",
        "auth.url",
        "auth.signin",
        "auth.headers",
        "proto",
        "lb",
        "fastcgi.root",
        "backend-verify",
        "redirect",
        "redirect.code",
        "redirect.keep-path",
        "www",
        "hsts",
        "health",
        "error-pages",
    ] {
        assert!(keys.contains(key), "the README's Policies section has no example of {key}: {keys:?}");
    }
}
