//! Every label key, declared once: its name, where it applies, what it means and its default.
//! The label parser (`labels.rs`) knows the keys from here, `docs/labels.md` is this table
//! rendered ([`reference`], checked by a test), and a key's example is tested to parse.
//!
//! Adding a key: one entry here, its parsing in `labels::route` (or `container_routes` for a
//! container key), its render; the docs test then says what to paste into `docs/labels.md`.

/// Where a key applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per container: `<prefix>.<key>`.
    Container,
    /// Per route: `<prefix>.<key>` for the container's route (and the default of its named
    /// routes, unless [`LabelKey::inherited`] is false), `<prefix>.<route>.<key>` for a named one.
    Route,
}

/// One label key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelKey {
    pub key: &'static str,
    pub scope: Scope,
    /// Whether a named route takes the container-wide value as its default.
    pub inherited: bool,
    /// What it does and which values it takes (Markdown, one line).
    pub meaning: &'static str,
    /// What holds when it is not set (Markdown).
    pub default: &'static str,
    /// A valid value.
    pub example: &'static str,
}

const fn route(key: &'static str, meaning: &'static str, default: &'static str, example: &'static str) -> LabelKey {
    LabelKey { key, scope: Scope::Route, inherited: true, meaning, default, example }
}

/// The keys, in the order the reference lists them.
pub const KEYS: &[LabelKey] = &[
    LabelKey {
        inherited: false,
        ..route(
            "domains",
            "comma list of host names; required. Wildcards only leftmost (`*.example.com`); international names become punycode",
            "—",
            "example.com,www.example.com",
        )
    },
    route("port", "backend port, 1–65535", "the container's only exposed TCP port, else 80", "8080"),
    route("path", "location prefix (`/`, `/api/`); the full URI is passed on unchanged", "`/`", "/api/"),
    LabelKey {
        inherited: false,
        ..route(
            "service",
            "upstream name; containers with the same service are load-balanced (one server per replica)",
            "compose `project-service`, else the container name",
            "shop",
        )
    },
    route(
        "network",
        "the Docker network nginx reaches the container on",
        "the network shared with nginx, else the only one (see below)",
        "proxy",
    ),
    route(
        "allow",
        "comma list of IPs/CIDRs (v4, v6); only they may reach these domains (`allow …; deny all;`)",
        "anyone",
        "10.8.0.0/24,fd00:8::/64",
    ),
    route("tls", "`auto` (HTTPS in production) or `off` (plain HTTP for this route)", "`auto`", "off"),
    LabelKey {
        key: "enable",
        scope: Scope::Container,
        inherited: false,
        meaning: "`false` ignores the container",
        default: "`true`",
        example: "true",
    },
    LabelKey {
        key: "nginx",
        scope: Scope::Container,
        inherited: false,
        meaning: "`true` marks the nginx container (its networks decide which addresses are used)",
        default: "—",
        example: "true",
    },
];

/// The key named `key`, if there is one.
pub fn get(key: &str) -> Option<&'static LabelKey> {
    KEYS.iter().find(|k| k.key == key)
}

/// The per-route keys, in reference order.
pub fn route_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| k.scope == Scope::Route).map(|k| k.key)
}

/// The per-container keys, in reference order.
pub fn container_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| k.scope == Scope::Container).map(|k| k.key)
}

/// The label reference as a Markdown table, for labels with `prefix`.
pub fn reference(prefix: &str) -> String {
    let mut out = String::from("| label | meaning | default |\n|---|---|---|\n");
    let row = |out: &mut String, key: &LabelKey| {
        out.push_str(&format!("| `{prefix}.{}` | {} | {} |\n", key.key, key.meaning, key.default));
    };
    for key in KEYS.iter().filter(|k| k.scope == Scope::Route) {
        row(&mut out, key);
    }
    let inherited: Vec<String> =
        KEYS.iter().filter(|k| k.scope == Scope::Route && k.inherited).map(|k| format!("`{}`", k.key)).collect();
    out.push_str(&format!(
        "| `{prefix}.<route>.<key>` | a further route on the same container (`<route>` is `[a-z0-9-]+`; keys as \
         above); takes the container-wide {} as defaults; its service defaults to `<service>-<route>` (the container's `service` label, else its default) | — |\n",
        inherited.join(", ")
    ));
    for key in KEYS.iter().filter(|k| k.scope == Scope::Container) {
        row(&mut out, key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::labels::{routes, Container, LabelSettings, NetworkAddress};

    /// `docs/labels.md` holds [`reference`] between its table markers; `UPDATE_DOCS=1` rewrites it.
    #[test]
    fn the_docs_table_is_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/labels.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (start, end) = ("<!-- table -->\n", "<!-- end of table -->");
        let a = doc.find(start).expect("docs/labels.md has a table start marker") + start.len();
        let b = doc.find(end).expect("docs/labels.md has a table end marker");
        let table = reference("smart-proxy");
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
            return;
        }
        assert_eq!(&doc[a..b], table, "docs/labels.md is out of date: run UPDATE_DOCS=1 cargo test --lib label_schema");
    }

    /// Each key's example is a valid value: set on a container, it yields a route and no error.
    #[test]
    fn every_example_parses() {
        for key in KEYS.iter().filter(|k| k.key != "nginx") {
            let mut labels = std::collections::BTreeMap::new();
            labels.insert("smart-proxy.domains".to_string(), "example.com".to_string());
            labels.insert(format!("smart-proxy.{}", key.key), key.example.to_string());
            let network = if key.key == "network" { key.example } else { "proxy" };
            let c = Container {
                id: "id".into(),
                name: "app".into(),
                labels,
                exposed_ports: vec![8080],
                networks: [(network.to_string(), NetworkAddress { ipv4: Some([172, 18, 0, 2].into()), ipv6: None })]
                    .into(),
                health: None,
                running: true,
            };
            let out = routes(&[c], &LabelSettings { prefix: "smart-proxy".into(), nginx_networks: None });
            assert!(out.diagnostics.is_empty(), "{}={}: {:?}", key.key, key.example, out.diagnostics);
            assert!(!out.routes.is_empty(), "{}={} gave no route", key.key, key.example);
        }
    }

    #[test]
    fn keys_are_unique_and_named_routes_inherit_all_but_domains_and_service() {
        let mut names: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
        let not_inherited: Vec<&str> =
            KEYS.iter().filter(|k| k.scope == Scope::Route && !k.inherited).map(|k| k.key).collect();
        assert_eq!(not_inherited, ["domains", "service"]);
    }
}
