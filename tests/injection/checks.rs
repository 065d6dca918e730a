//! Per-table checks, and running the properties (both outcomes must occur).

use super::*;

pub(super) struct Ctx {
    _sandbox: NginxSandbox,
    renderer: Renderer,
    production: RenderSettings,
    local: RenderSettings,
    /// How many accepted cases went through the real `nginx -t`.
    nginx_tested: AtomicUsize,
}

/// Accepted cases per property (with a hostile character in the input) that are also loaded
/// with the real `nginx -t`; more would make the module slow.
pub(super) const NGINX_TESTS_PER_PROPERTY: usize = 2;

impl Ctx {
    pub(super) fn new() -> Self {
        let sandbox = NginxSandbox::new();
        let production = sandbox.settings(false);
        let local = sandbox.settings(true);
        Ctx { _sandbox: sandbox, renderer: Renderer::builtin(), production, local, nginx_tested: AtomicUsize::new(0) }
    }

    pub(super) fn render(&self, table: &RouteTable, settings: &RenderSettings) -> String {
        self.renderer.render(table, settings).unwrap_or_else(|e| panic!("render failed: {e}\n{table:#?}"))
    }

    /// Every check that does not depend on the source: values, diagnostics, rejected entries
    /// and the structural comparison with the twin, in both modes.
    pub(super) fn check(&self, table: &RouteTable, inputs: &[&str]) {
        check_values(table);
        for d in &table.diagnostics {
            check_diagnostic(d);
        }
        check_rejected_entries_yield_nothing(table);
        let (twin, subs) = twin(table);
        for settings in [&self.production, &self.local] {
            let cfg = self.render(table, settings);
            let twin_cfg = self.render(&twin, settings);
            assert_same_structure(&cfg, &twin_cfg, &subs, inputs);
        }
        let hostile = inputs.iter().any(|i| i.chars().any(|c| !value_char(c)));
        if hostile
            && !table.sites.is_empty()
            && self.nginx_tested.fetch_add(1, Ordering::Relaxed) < NGINX_TESTS_PER_PROPERTY
        {
            NginxSandbox::new().render_and_test(table, false);
        }
    }
}

/// Each value the template prints stays within its grammar's alphabet.
pub(super) fn check_values(table: &RouteTable) {
    for site in &table.sites {
        let d = site.domain.as_str();
        let body = d.strip_prefix("*.").unwrap_or(d);
        assert!(
            d.len() <= 253
                && !body.is_empty()
                && body.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'),
            "domain {d:?}"
        );
        for loc in &site.locations {
            let p = loc.path.as_str();
            assert!(
                p.starts_with('/') && p.chars().all(|c| c.is_ascii_alphanumeric() || "/._~-".contains(c)),
                "path {p:?}"
            );
            for cidr in &loc.allow {
                let s = cidr.to_string();
                assert!(s.chars().all(|c| c.is_ascii_hexdigit() || ".:/".contains(c)), "cidr {s:?}");
            }
        }
    }
    for site in &table.sites {
        if let Some(smart_proxy::routes::policy::RedirectTo::Url(url)) = site.redirect.as_ref().map(|r| &r.to) {
            // Quoted by nginx_literal: no blank, quote, brace, backslash or '#' may reach it.
            let u = url.as_str();
            assert!(u.chars().all(|c| c.is_ascii_graphic() && !"\"'{}\\#`".contains(c)), "redirect {u:?}");
        }
    }
    for u in &table.upstreams {
        if let Some(root) = &u.protocol.fastcgi_root {
            let r = root.as_str();
            assert!(r.starts_with('/') && r.chars().all(|c| c.is_ascii_alphanumeric() || "/._~-".contains(c)), "{r:?}");
        }
        if let smart_proxy::routes::policy::BackendVerify::Name(name) = &u.protocol.verify {
            let n = name.as_str();
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c)), "{n:?}");
        }
        assert!(
            u.id.starts_with("sp_") && u.id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "upstream id {:?}",
            u.id
        );
        for b in &u.backends {
            let a = b.address();
            assert!(
                a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".:[]-".contains(c)),
                "backend {a:?}"
            );
        }
    }
}

/// Characters an error message must never echo raw: controls, bidi controls, zero-width and
/// other invisible format characters.
pub(super) fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// The longest a diagnostic message may be. Rejected values are echoed shortened (80
/// characters), but accepted, validated values are echoed whole: the route-conflict messages of
/// `RouteTable::build` name `{domain}{path}` (up to 253 + 1024 characters) and two service names
/// (128 each), so a message may legitimately pass 1,000 characters, never 2,000.
pub(super) const MAX_MESSAGE: usize = 2000;

/// What is wrong with a diagnostic, if anything: a message that is too long or echoes a raw
/// control/invisible character, or a printed line (`error: <origin>: <message>`, as `--dry-run`
/// and `check` print it) that is not one bounded line.
pub(super) fn diagnostic_problem(d: &Diagnostic) -> Option<String> {
    let len = d.message.chars().count();
    if len >= MAX_MESSAGE {
        return Some(format!(
            "diagnostic message of {len} characters: {:?}...",
            d.message.chars().take(300).collect::<String>()
        ));
    }
    if let Some(c) = d.message.chars().find(|c| invisible(*c)) {
        return Some(format!("diagnostic message echoes a raw {c:?}: {:?}", d.message));
    }
    printed_is_one_bounded_line(d).err()
}

pub(super) fn check_diagnostic(d: &Diagnostic) {
    if let Some(problem) = diagnostic_problem(d) {
        panic!("{problem}");
    }
}

/// The entry an origin belongs to: an env entry, a JSON array element, or a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Entry {
    Env(&'static str, usize),
    File(String),
    Container(String),
}

pub(super) fn entry(origin: &Origin) -> Entry {
    match origin {
        Origin::Env { var, entry, .. } => Entry::Env(var, *entry),
        Origin::File { field, .. } => Entry::File(field.split('.').next().unwrap_or_default().to_string()),
        Origin::Container { name, .. } => Entry::Container(name.clone()),
    }
}

pub(super) fn rejected(table: &RouteTable) -> BTreeSet<Entry> {
    table.errors().map(|d| entry(&d.origin)).collect()
}

pub(super) fn routed(table: &RouteTable) -> BTreeSet<Entry> {
    let locations = table.sites.iter().flat_map(|s| &s.locations).map(|l| &l.origin);
    // A redirecting domain has no location: the entry that set its redirect routes it.
    let redirects = table.sites.iter().filter_map(|s| s.redirect_by.as_ref());
    locations.chain(redirects).map(entry).collect()
}

/// An entry with an error contributes no location and no upstream server.
pub(super) fn check_rejected_entries_yield_nothing(table: &RouteTable) {
    let rejected = rejected(table);
    for loc in table.sites.iter().flat_map(|s| &s.locations) {
        assert!(!rejected.contains(&entry(&loc.origin)), "rejected entry {} still routes {}", loc.origin, loc.path);
    }
    for origin in table.sites.iter().filter_map(|s| s.redirect_by.as_ref()) {
        assert!(!rejected.contains(&entry(origin)), "rejected entry {origin} still redirects");
    }
    for b in table.upstreams.iter().flat_map(|u| &u.backends) {
        assert!(!rejected.contains(&entry(&b.origin)), "rejected entry {} still has server {}", b.origin, b.address());
    }
}

pub(super) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Accepted,
    Rejected,
    /// Neither routed nor an error (enable=false, the nginx container itself).
    Ignored,
}

/// Runs `test` on `cases()` generated values and checks that both outcomes occurred often
/// enough for the property not to hold vacuously.
pub(super) fn run<S>(name: &str, strategy: S, test: impl Fn(&S::Value) -> Outcome)
where
    S: Strategy,
    S::Value: Debug,
{
    run_expecting(name, strategy, true, true, test)
}

/// `run`, saying whether some cases must be accepted and whether some must be rejected.
pub(super) fn run_expecting<S>(
    name: &str,
    strategy: S,
    acceptances: bool,
    rejections: bool,
    test: impl Fn(&S::Value) -> Outcome,
) where
    S: Strategy,
    S::Value: Debug,
{
    let accepted = AtomicUsize::new(0);
    let rejected = AtomicUsize::new(0);
    let ignored = AtomicUsize::new(0);
    let cases = cases();
    let start = std::time::Instant::now();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |value| {
        match test(&value) {
            Outcome::Accepted => accepted.fetch_add(1, Ordering::Relaxed),
            Outcome::Rejected => rejected.fetch_add(1, Ordering::Relaxed),
            Outcome::Ignored => ignored.fetch_add(1, Ordering::Relaxed),
        };
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let (a, r, i) = (accepted.into_inner(), rejected.into_inner(), ignored.into_inner());
    eprintln!("{name}: {cases} cases, {a} accepted, {r} rejected, {i} ignored, {:?}", start.elapsed());
    assert!(
        !acceptances || a * 20 >= cases as usize,
        "{name}: only {a} of {cases} cases were accepted; the structural check ran too rarely"
    );
    assert!(!rejections || (r + i) * 20 >= cases as usize, "{name}: only {r} of {cases} cases were rejected");
}

/// The env entries a variable holds, numbered as the parser numbers them.
pub(super) fn env_entries(value: &str) -> Vec<(usize, &str)> {
    value.split(',').map(str::trim).enumerate().map(|(i, s)| (i + 1, s)).filter(|(_, s)| !s.is_empty()).collect()
}

/// What `--dry-run`/`check` print for each problem: `error: <origin>: <message>`.
pub(super) fn printed_is_one_bounded_line(d: &Diagnostic) -> Result<(), String> {
    let text = d.to_string();
    let len = text.chars().count();
    if len >= 2 * MAX_MESSAGE {
        return Err(format!("{len} characters: {}...", text.chars().take(200).collect::<String>()));
    }
    if let Some(c) = text.chars().find(|c| invisible(*c)) {
        return Err(format!("raw {c:?} in {text:?}"));
    }
    Ok(())
}

/// The label prefix of the label properties.
pub(super) const P: &str = "smart-proxy";

pub(super) fn label_settings() -> LabelSettings {
    LabelSettings { prefix: P.into(), nginx_networks: None }
}
