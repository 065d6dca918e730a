//! No value from a label, an env var or a JSON file can inject nginx syntax.
//!
//! Every field is fed generated hostile strings (`;`, `{`, `}`, quotes, `$`, `#`, CR/LF, NUL,
//! backslash, blanks, bidi and zero-width characters, full-width look-alikes, template syntax,
//! 10,000-character values, and valid-looking prefixes such as `a.com;include /etc/passwd`).
//! For each case the source is parsed and merged as the agent does, and then either
//!
//! * the value is **rejected**: an error diagnostic names the entry (field, env entry or
//!   container), its message is bounded and echoes no raw control, bidi or zero-width character,
//!   the diagnostic as printed (`error: <origin>: <message>`) is one bounded line, and the entry
//!   yields no route and no upstream server; or
//! * the value is **accepted** (after normalisation): the config rendered from the table
//!   (production and LOCAL) is compared with the config rendered from a *benign twin* of the same
//!   table, where every validated value that reaches the template (domain, upstream id, backend
//!   address, path, CIDR) is swapped for a fixed benign value of the same kind
//!   ([`twin`]). Both configs are split with nginx's own lexer rules ([`tokenize`]) and must have
//!   the same statement skeleton (directive names, argument counts, `;`/`{`/`}`), the same tokens
//!   except where a twin value sits (there the token must be exactly the benign token with the
//!   twin value replaced by the accepted value), the same number of every special character, and
//!   no character outside the twin config's alphabet plus `[A-Za-z0-9._:/[]*~-]`.
//!
//! Every table is also checked directly: each rendered value matches its grammar's alphabet.
//! A few fixed nasty inputs are additionally loaded with the real `nginx -t`.
//!
//! `PROPTEST_CASES=N` raises the number of cases per property (default 256).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use smart_proxy::render::{RenderSettings, Renderer};
use smart_proxy::routes::grammar::parse_bool;
use smart_proxy::routes::{
    Cidr, Diagnostic, DomainName, Host, NetworkChoice, Origin, PathPrefix, RouteTable, ServiceName,
};
use smart_proxy::sources::file::FileKind;
use smart_proxy::sources::labels::{Container, LabelSettings, NetworkAddress};

use crate::support::{container, NginxSandbox};

// ---------------------------------------------------------------------------------------------
// Hostile strings
// ---------------------------------------------------------------------------------------------

/// Fragments an attacker (or a typo) could put into a value.
const NASTY: &[&str] = &[
    ";",
    "{",
    "}",
    "\"",
    "'",
    "`",
    "$",
    "#",
    "\\",
    "\n",
    "\r",
    "\r\n",
    "\0",
    " ",
    "\t",
    "\u{b}",
    "\u{c}",
    // Unicode line breaks, blanks, bidi controls, zero-width and ignorable characters.
    "\u{85}",
    "\u{2028}",
    "\u{2029}",
    "\u{3000}",
    "\u{a0}",
    "\u{202e}",
    "\u{202d}",
    "\u{2066}",
    "\u{2067}",
    "\u{200e}",
    "\u{200f}",
    "\u{61c}",
    "\u{200b}",
    "\u{200c}",
    "\u{200d}",
    "\u{2060}",
    "\u{feff}",
    "\u{ad}",
    "\u{34f}",
    "\u{301}",
    // Full-width and other look-alikes of ; { } " $ # . / :
    "\u{ff1b}",
    "\u{ff5b}",
    "\u{ff5d}",
    "\u{ff02}",
    "\u{ff04}",
    "\u{ff03}",
    "\u{3002}",
    "\u{ff0e}",
    "\u{ff61}",
    "\u{2024}",
    "\u{ff0f}",
    "\u{2215}",
    "\u{ff1a}",
    "\u{37e}",
    // Case-mapping and compatibility oddities, RTL scripts.
    "ß",
    "İ",
    "\u{212a}",
    "ﬀ",
    "Ⅸ",
    "①",
    "٣",
    "مثال",
    "עברית",
    "😀",
    // Whole injection attempts.
    ";include /etc/passwd;",
    " include /etc/passwd",
    "}\nserver {",
    "; }\n}\nserver { listen 80; location / { return 200 \"pwned\"; } }\n",
    "$host",
    "${x}",
    "$http_x",
    "# c",
    "\";",
    "';",
    "\\n",
    "\\\"",
    "%0a",
    "%3B",
    "&#59;",
    "{{ x }}",
    "{% raw %}",
    "{#",
    "#}",
    "<!--",
    "\\x00",
    "0x0a",
    // Separators of the input formats and of nginx arguments.
    ",",
    ":",
    "::",
    ".",
    "..",
    "-",
    "_",
    "*",
    "*.",
    "/",
    "//",
    "/../",
    "/./",
    "[",
    "]",
    "@",
    "=",
    "~",
    "^~",
    "(",
    ")",
    "|",
    "<",
    ">",
    "?",
    "%",
    "+",
    "!",
    "&",
];

/// Whitespace a value may be padded with; `str::trim` removes all of it.
const PAD: &[&str] = &["", "", " ", "\t", "\n", "\r\n", "  \t ", "\u{3000}", "\u{2028}", "\u{85}", "\u{a0}"];

/// Units repeated to build very long values.
const LONG_UNITS: &[&str] =
    &["a", "a.", "a;", " ", "\n", "\u{ad}", "\u{200b}", "ü", ";include /etc/passwd", "0", "/a", "1,"];

const DOMAIN_OK: &[&str] = &[
    "a.com",
    "App1.Example.COM",
    "*.tenants.example.com",
    "bücher.example",
    "MÜNCHEN.example",
    "مثال.إختبار",
    "xn--bcher-kva.example",
    "ａｂｃ.example",
    "a\u{ad}b.example",
    "x\u{3002}example",
    "example.com.",
    "localhost",
    "1a.example",
    "a-b.c-d.example",
];
const SERVICE_OK: &[&str] = &["app", "App_1", "a.b-c", "1", "x.", "web-9"];
const HOST_OK: &[&str] =
    &["10.0.0.5", "[::1]", "[2001:DB8::5]", "Api.Internal", "host-1.svc.", "localhost", "1.2.3", "ünï.example"];
const PORT_OK: &[&str] = &["8080", "1", "65535", "0080", "443"];
const PATH_OK: &[&str] = &["/", "/api/", "/A-b_c.d~e/", "/v1", "/.well-known/x"];
const CIDR_OK: &[&str] =
    &["10.0.0.0/8", "192.168.1.7", "fd00::/8", "10.1.2.3/8", "::1", "0.0.0.0/0", "10.8.0.0/24, fd00:8::/64"];
const TLS_OK: &[&str] = &["auto", "off", "OFF", "", "Auto"];
const BOOL_OK: &[&str] = &["true", "false", "1", "0", "yes", "no", "on", "off", "TRUE"];
const ROUTE_OK: &[&str] = &["api", "admin-2", "0"];
const NETWORK_OK: &[&str] = &["proxy"];

/// A generated value. Its `Debug` (used in failure reports) is escaped and shortened, so a
/// failing 10,000-character case stays readable.
#[derive(Clone, PartialEq, Eq)]
struct Hostile(String);

impl Debug for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.chars().count();
        if n <= 300 {
            write!(f, "{:?}", self.0)
        } else {
            let head: String = self.0.chars().take(300).collect();
            write!(f, "{head:?}... ({n} characters)")
        }
    }
}

impl std::fmt::Display for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Hostile {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Hostile strings for one field: decorated valid values (mostly accepted), valid prefixes with an
/// injection attempt, random mixtures, 10,000-character values and arbitrary Unicode.
fn hostile(valid: &'static [&'static str]) -> BoxedStrategy<Hostile> {
    let fragment = prop_oneof![
        4 => select(NASTY).prop_map(str::to_string),
        2 => select(valid).prop_map(str::to_string),
        1 => "[a-zA-Z0-9.-]{1,8}",
    ];
    let long = (select(valid), select(LONG_UNITS), prop_oneof![Just(10_000usize), 100usize..3000], any::<bool>())
        .prop_map(|(v, unit, len, prefix)| {
            let body: String = unit.chars().cycle().take(len.saturating_sub(v.chars().count())).collect();
            if prefix {
                format!("{v}{body}")
            } else {
                format!("{body}{v}")
            }
        });
    prop_oneof![
        3 => (select(PAD), select(valid), select(PAD)).prop_map(|(a, v, b)| format!("{a}{v}{b}")),
        3 => (select(valid), vec(fragment.clone(), 1..4)).prop_map(|(v, f)| format!("{v}{}", f.concat())),
        3 => vec(fragment, 1..8).prop_map(|f| f.concat()),
        1 => long,
        1 => (select(valid), 1000usize..6000).prop_map(|(v, n)| format!("{}{v}{}", " ".repeat(n), "\t".repeat(n))),
        1 => any::<String>(),
        1 => "\\PC{0,40}",
    ]
    .prop_map(Hostile)
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// An nginx lexer (ngx_conf_read_token's rules) and the structural comparison
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A bare or quoted argument; `quote` is the quote character, if any. Escapes kept raw.
    Word {
        text: String,
        quote: Option<char>,
    },
    Semi,
    Open,
    Close,
    Comment(String),
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits a config as nginx does: blanks separate words; `;`, `{` and `}` at a token start are
/// structure; `#` at a token start runs to the end of the line; `"..."`/`'...'` with backslash
/// escapes; inside a bare word only blanks, `;` and `{` end it (`${` belongs to the word).
fn tokenize(cfg: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = cfg.chars().collect();
    let n = chars.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        match c {
            c if is_blank(c) => i += 1,
            ';' => {
                out.push(Tok::Semi);
                i += 1;
            }
            '{' => {
                out.push(Tok::Open);
                i += 1;
            }
            '}' => {
                out.push(Tok::Close);
                i += 1;
            }
            '#' => {
                let start = i + 1;
                while i < n && chars[i] != '\n' {
                    i += 1;
                }
                out.push(Tok::Comment(chars[start..i].iter().collect()));
            }
            '"' | '\'' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&ch) = chars.get(i) else { return Err(format!("unterminated {quote} string: {text:?}")) };
                    if ch == '\\' {
                        text.push(ch);
                        text.extend(chars.get(i + 1));
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if ch == quote {
                        break;
                    }
                    text.push(ch);
                }
                if let Some(&next) = chars.get(i) {
                    if !(is_blank(next) || next == ';' || next == '{' || next == ')') {
                        return Err(format!("unexpected {next:?} after the quoted string {text:?}"));
                    }
                }
                out.push(Tok::Word { text, quote: Some(quote) });
            }
            _ => {
                let mut text = String::new();
                let mut variable = false;
                while i < n {
                    let ch = chars[i];
                    if ch == '{' && variable {
                        text.push(ch);
                        i += 1;
                        variable = false;
                        continue;
                    }
                    variable = false;
                    if ch == '\\' {
                        text.push(ch);
                        text.extend(chars.get(i + 1));
                        i += 2;
                        continue;
                    }
                    if is_blank(ch) || ch == ';' || ch == '{' {
                        break;
                    }
                    variable = ch == '$';
                    text.push(ch);
                    i += 1;
                }
                out.push(Tok::Word { text, quote: None });
            }
        }
    }
    Ok(out)
}

/// The statement skeleton: `name/argc;`, `name/argc{` and `}` per statement, checking the
/// block structure as nginx does (no empty statement, no `}` inside a statement, balanced).
fn skeleton(tokens: &[Tok]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    let mut depth = 0usize;
    for t in tokens {
        match t {
            Tok::Comment(_) => {}
            Tok::Word { text, .. } => words.push(text),
            Tok::Semi | Tok::Open => {
                let Some(name) = words.first() else { return Err(format!("unexpected {t:?} with no directive")) };
                let end = if *t == Tok::Semi { ";" } else { "{" };
                out.push(format!("{name}/{}{end}", words.len() - 1));
                if *t == Tok::Open {
                    depth += 1;
                }
                words.clear();
            }
            Tok::Close => {
                if !words.is_empty() {
                    return Err(format!("unexpected '}}' after {words:?}"));
                }
                depth = depth.checked_sub(1).ok_or("unbalanced '}'")?;
                out.push("}".into());
            }
        }
    }
    if !words.is_empty() || depth != 0 {
        return Err(format!("unexpected end of file (depth {depth}, pending {words:?})"));
    }
    Ok(out)
}

/// Where a benign twin value sits in the twin config, and what may stand there in the config
/// under test: benign form → accepted forms.
#[derive(Debug, Default)]
struct Subs(BTreeMap<String, BTreeSet<String>>);

impl Subs {
    fn add(&mut self, benign: impl Into<String>, accepted: impl Into<String>) {
        self.0.entry(benign.into()).or_default().insert(accepted.into());
    }

    /// True when `hostile` is `benign` with every twin value replaced by one of its accepted
    /// forms (leftmost, then longest twin value first), and nothing else changed.
    fn matches(&self, benign: &str, hostile: &str) -> bool {
        let mut best: Option<(usize, &String, &BTreeSet<String>)> = None;
        for (form, accepted) in &self.0 {
            if let Some(p) = benign.find(form.as_str()) {
                if best.is_none_or(|(bp, bf, _)| p < bp || (p == bp && form.len() > bf.len())) {
                    best = Some((p, form, accepted));
                }
            }
        }
        let Some((p, form, accepted)) = best else { return benign == hostile };
        if hostile.get(..p) != Some(&benign[..p]) {
            return false;
        }
        accepted.iter().any(|a| {
            hostile[p..].starts_with(a.as_str()) && self.matches(&benign[p + form.len()..], &hostile[p + a.len()..])
        })
    }
}

/// Characters a validated value may bring into the config.
fn value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:/[]*~-".contains(c)
}

/// Characters whose count must not change between the config under test and its twin.
const STRUCTURAL: &[char] = &[
    ';', '{', '}', '"', '\'', '`', '$', '#', '\\', '\n', '\r', '\t', '\0', ' ', '\u{b}', '\u{c}', '=', '^', '(', ')',
    '|', ',',
];

/// How often each character occurs in `text`.
fn histogram(text: &str) -> BTreeMap<char, usize> {
    let mut ascii = [0usize; 128];
    let mut other = BTreeMap::new();
    for c in text.chars() {
        match ascii.get_mut(c as usize) {
            Some(n) => *n += 1,
            None => *other.entry(c).or_insert(0) += 1,
        }
    }
    other.extend(ascii.iter().enumerate().filter(|(_, n)| **n > 0).map(|(c, n)| (c as u8 as char, *n)));
    other
}

/// The structural comparison (see the module documentation); panics with both configs.
fn assert_same_structure(cfg: &str, twin_cfg: &str, subs: &Subs, inputs: &[&str]) {
    if let Err(what) = compare_structure(cfg, twin_cfg, subs, inputs) {
        let inputs: Vec<Hostile> = inputs.iter().map(|i| Hostile(i.to_string())).collect();
        panic!("{what}\n--- inputs ---\n{inputs:?}\n--- config under test ---\n{cfg}\n--- benign twin ---\n{twin_cfg}");
    }
}

fn compare_structure(cfg: &str, twin_cfg: &str, subs: &Subs, inputs: &[&str]) -> Result<(), String> {
    let fail = |what: String| -> Result<(), String> { Err(what) };
    let toks = tokenize(cfg).map_err(|e| format!("the config does not tokenize: {e}"))?;
    let twin_toks = tokenize(twin_cfg).map_err(|e| format!("the twin config does not tokenize: {e}"))?;
    let shape = skeleton(&toks).map_err(|e| format!("the config is not well formed: {e}"))?;
    let twin_shape = skeleton(&twin_toks).map_err(|e| format!("the twin is not well formed: {e}"))?;
    if shape != twin_shape {
        let at = shape.iter().zip(&twin_shape).position(|(a, b)| a != b).unwrap_or(shape.len().min(twin_shape.len()));
        return fail(format!(
            "statement skeletons differ at statement {at}: {:?} vs twin {:?}",
            shape.get(at.saturating_sub(2)..(at + 3).min(shape.len())),
            twin_shape.get(at.saturating_sub(2)..(at + 3).min(twin_shape.len()))
        ));
    }
    if toks.len() != twin_toks.len() {
        return fail(format!("{} tokens vs {} in the twin", toks.len(), twin_toks.len()));
    }
    let mut statement_start = true;
    let mut directive = String::new();
    for (i, (t, b)) in toks.iter().zip(&twin_toks).enumerate() {
        match (t, b) {
            (Tok::Word { text: h, quote: hq }, Tok::Word { text: w, quote: wq }) => {
                if hq != wq {
                    return fail(format!("token {i}: quoting differs: {t:?} vs twin {b:?}"));
                }
                if statement_start {
                    // Directive names come from the template alone.
                    if h != w {
                        return fail(format!("token {i}: directive {h:?} vs twin {w:?}"));
                    }
                    directive = h.to_string();
                } else if !subs.matches(w, h) {
                    // server_names_hash_bucket_size follows the longest name's length.
                    let hash_size = directive.starts_with("server_names_hash_")
                        && h.chars().all(|c| c.is_ascii_digit())
                        && w.chars().all(|c| c.is_ascii_digit());
                    if !hash_size {
                        return fail(format!(
                            "token {i} of `{directive}`: {h:?} is not the twin's {w:?} with accepted values in place"
                        ));
                    }
                }
                statement_start = false;
            }
            (Tok::Comment(h), Tok::Comment(w)) => {
                if !subs.matches(w, h) {
                    return fail(format!("token {i}: comment {h:?} vs twin {w:?}"));
                }
            }
            (t, b) if t == b => {
                statement_start = true;
            }
            _ => return fail(format!("token {i}: {t:?} vs twin {b:?}")),
        }
    }
    let (counts, twin_counts) = (histogram(cfg), histogram(twin_cfg));
    let count = |h: &BTreeMap<char, usize>, c: char| h.get(&c).copied().unwrap_or(0);
    for &c in STRUCTURAL {
        let (n, m) = (count(&counts, c), count(&twin_counts, c));
        if n != m {
            return fail(format!("{c:?} occurs {n} times, {m} times in the twin"));
        }
    }
    if let Some(c) = counts.keys().find(|c| !twin_counts.contains_key(c) && !value_char(**c)) {
        return fail(format!("the config holds {c:?}, which neither the twin nor any validated value has"));
    }
    for input in inputs {
        for c in input.chars().filter(|c| !value_char(*c)).collect::<BTreeSet<_>>() {
            let (n, m) = (count(&counts, c), count(&twin_counts, c));
            if n != m {
                return fail(format!("input character {c:?} occurs {n} times in the config, {m} times in the twin"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The benign twin
// ---------------------------------------------------------------------------------------------

/// The same kind of origin, with benign text.
fn twin_origin(origin: &Origin) -> Origin {
    match origin {
        Origin::Env { var, entry, .. } => Origin::Env { var, entry: *entry, text: "twin".into() },
        Origin::File { .. } => Origin::File { path: "/twin.json".into(), field: "twin".into() },
        Origin::Container { .. } => Origin::Container { name: "twin".into(), label: None },
    }
}

/// A copy of `table` with every value swapped for a benign one of the same kind (wildcard or not,
/// IP or host name, `/` or another path), and the substitutions made for the values the template
/// prints. Values the template does not print today (origins, service and network names) are
/// swapped too, without a substitution: if a template ever printed them, the comparison fails.
fn twin(table: &RouteTable) -> (RouteTable, Subs) {
    let mut subs = Subs::default();
    let mut twin = table.clone();
    twin.diagnostics.clear();
    let mut ids = BTreeMap::new();
    let mut n = 0u32;
    for (i, u) in twin.upstreams.iter_mut().enumerate() {
        let id = format!("sp_twin{i:04}u");
        subs.add(&id, &u.id);
        ids.insert(u.id.clone(), id.clone());
        u.id = id;
        u.service = ServiceName::parse(&format!("twin{i:04}s")).unwrap();
        for b in &mut u.backends {
            n += 1;
            b.origin = twin_origin(&b.origin);
            if let Some(network) = &mut b.network {
                *network = NetworkChoice { name: "twinnet".into(), reason: "twin".into() };
            }
            let host = match b.host {
                Host::Ip(IpAddr::V4(_)) => Host::Ip(IpAddr::V4(Ipv4Addr::from(0x6440_0000 + n))),
                Host::Ip(IpAddr::V6(_)) => {
                    Host::Ip(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x7777, n as u16)))
                }
                Host::Name(_) => Host::parse(&format!("twinhost{n:04}h.example")).unwrap(),
            };
            let original = b.address();
            b.host = host;
            subs.add(b.address(), original);
        }
    }
    let mut p = 0u32;
    let mut a = 0u32;
    for (i, site) in twin.sites.iter_mut().enumerate() {
        let name = format!("{}twin{i:04}d.example", if site.domain.is_wildcard() { "*." } else { "" });
        let domain = DomainName::parse(&name).unwrap();
        for (benign, accepted) in [
            (domain.as_str().to_string(), site.domain.as_str().to_string()),
            (domain.cert_name(), site.domain.cert_name()),
            (domain.file_stem(), site.domain.file_stem()),
        ] {
            subs.add(benign, accepted);
        }
        site.domain = domain;
        for loc in &mut site.locations {
            loc.origin = twin_origin(&loc.origin);
            if loc.path.as_str() != "/" {
                p += 1;
                let path = PathPrefix::parse(&format!("/twin{p:04}p")).unwrap();
                subs.add(path.as_str(), loc.path.as_str());
                loc.path = path;
            }
            if let Some(id) = &mut loc.upstream {
                *id = ids[id.as_str()].clone();
            }
            for cidr in &mut loc.allow {
                a += 1;
                let benign = Cidr::parse(&Ipv4Addr::from(0xc612_0000 + a).to_string()).unwrap();
                subs.add(benign.to_string(), cidr.to_string());
                *cidr = benign;
            }
        }
    }
    (twin, subs)
}

// ---------------------------------------------------------------------------------------------
// Per-table checks
// ---------------------------------------------------------------------------------------------

struct Ctx {
    _sandbox: NginxSandbox,
    renderer: Renderer,
    production: RenderSettings,
    local: RenderSettings,
    /// How many accepted cases went through the real `nginx -t`.
    nginx_tested: AtomicUsize,
}

/// Accepted cases per property (with a hostile character in the input) that are also loaded
/// with the real `nginx -t`; more would make the module slow.
const NGINX_TESTS_PER_PROPERTY: usize = 2;

impl Ctx {
    fn new() -> Self {
        let sandbox = NginxSandbox::new();
        let production = sandbox.settings(false);
        let local = sandbox.settings(true);
        Ctx { _sandbox: sandbox, renderer: Renderer::builtin(), production, local, nginx_tested: AtomicUsize::new(0) }
    }

    fn render(&self, table: &RouteTable, settings: &RenderSettings) -> String {
        self.renderer.render(table, settings).unwrap_or_else(|e| panic!("render failed: {e}\n{table:#?}"))
    }

    /// Every check that does not depend on the source: values, diagnostics, rejected entries
    /// and the structural comparison with the twin, in both modes.
    fn check(&self, table: &RouteTable, inputs: &[&str]) {
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
fn check_values(table: &RouteTable) {
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
    for u in &table.upstreams {
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
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// The longest a diagnostic message may be. Rejected values are echoed shortened (80
/// characters), but accepted, validated values are echoed whole: the route-conflict messages of
/// `RouteTable::build` name `{domain}{path}` (up to 253 + 1024 characters) and two service names
/// (128 each), so a message may legitimately pass 1,000 characters, never 2,000.
const MAX_MESSAGE: usize = 2000;

/// What is wrong with a diagnostic, if anything: a message that is too long or echoes a raw
/// control/invisible character, or a printed line (`error: <origin>: <message>`, as `--dry-run`
/// and `check` print it) that is not one bounded line.
fn diagnostic_problem(d: &Diagnostic) -> Option<String> {
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

fn check_diagnostic(d: &Diagnostic) {
    if let Some(problem) = diagnostic_problem(d) {
        panic!("{problem}");
    }
}

/// The entry an origin belongs to: an env entry, a JSON array element, or a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    Env(&'static str, usize),
    File(String),
    Container(String),
}

fn entry(origin: &Origin) -> Entry {
    match origin {
        Origin::Env { var, entry, .. } => Entry::Env(var, *entry),
        Origin::File { field, .. } => Entry::File(field.split('.').next().unwrap_or_default().to_string()),
        Origin::Container { name, .. } => Entry::Container(name.clone()),
    }
}

fn rejected(table: &RouteTable) -> BTreeSet<Entry> {
    table.errors().map(|d| entry(&d.origin)).collect()
}

fn routed(table: &RouteTable) -> BTreeSet<Entry> {
    table.sites.iter().flat_map(|s| &s.locations).map(|l| entry(&l.origin)).collect()
}

/// An entry with an error contributes no location and no upstream server.
fn check_rejected_entries_yield_nothing(table: &RouteTable) {
    let rejected = rejected(table);
    for loc in table.sites.iter().flat_map(|s| &s.locations) {
        assert!(!rejected.contains(&entry(&loc.origin)), "rejected entry {} still routes {}", loc.origin, loc.path);
    }
    for b in table.upstreams.iter().flat_map(|u| &u.backends) {
        assert!(!rejected.contains(&entry(&b.origin)), "rejected entry {} still has server {}", b.origin, b.address());
    }
}

// ---------------------------------------------------------------------------------------------
// Running the properties
// ---------------------------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Rejected,
    /// Neither routed nor an error (enable=false, the nginx container itself).
    Ignored,
}

/// Runs `test` on `cases()` generated values and checks that both outcomes occurred often
/// enough for the property not to hold vacuously.
fn run<S>(name: &str, strategy: S, test: impl Fn(&S::Value) -> Outcome)
where
    S: Strategy,
    S::Value: Debug,
{
    run_expecting(name, strategy, true, true, test)
}

/// `run`, saying whether some cases must be accepted and whether some must be rejected.
fn run_expecting<S>(name: &str, strategy: S, acceptances: bool, rejections: bool, test: impl Fn(&S::Value) -> Outcome)
where
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
fn env_entries(value: &str) -> Vec<(usize, &str)> {
    value.split(',').map(str::trim).enumerate().map(|(i, s)| (i + 1, s)).filter(|(_, s)| !s.is_empty()).collect()
}

// ---------------------------------------------------------------------------------------------
// DOMAINS / SERVICES
// ---------------------------------------------------------------------------------------------

/// Parses the env vars, merges, checks, and classifies DOMAINS entry outcomes: every DOMAINS entry
/// is either rejected (an error names it) or routed, never both, never neither.
fn env_case(ctx: &Ctx, domains: &str, services: &str, hostile: &str) -> Outcome {
    let table = RouteTable::build(vec![smart_proxy::sources::env::parse(Some(domains), Some(services))]);
    ctx.check(&table, &[hostile]);
    let (rejected, routed) = (rejected(&table), routed(&table));
    for (k, text) in env_entries(domains) {
        let e = Entry::Env("DOMAINS", k);
        assert!(
            rejected.contains(&e) != routed.contains(&e),
            "DOMAINS entry {k} {text:?}: rejected={} routed={}; diagnostics: {:#?}",
            rejected.contains(&e),
            routed.contains(&e),
            table.diagnostics
        );
    }
    let errors = table.errors().count();
    assert_eq!(table.sites.len(), routed.len(), "one site per accepted DOMAINS entry here");
    if errors > 0 {
        Outcome::Rejected
    } else {
        Outcome::Accepted
    }
}

#[test]
fn env_domain_part() {
    let ctx = Ctx::new();
    run("DOMAINS domain", (hostile(DOMAIN_OK), any::<bool>()), |(h, with_service)| {
        let domains = if *with_service { format!("{h}:app") } else { h.to_string() };
        env_case(&ctx, &domains, "app:10.0.0.5:8080", h)
    });
}

#[test]
fn env_service_part() {
    let ctx = Ctx::new();
    // The service is named in both variables, so an accepted name is also a defined one.
    run("DOMAINS service", (hostile(SERVICE_OK), any::<bool>()), |(h, defined)| {
        let services = if *defined { format!("{h}:10.0.0.5:8080") } else { "app:10.0.0.5:8080".to_string() };
        env_case(&ctx, &format!("svc.example.com:{h}"), &services, h)
    });
}

#[test]
fn env_services_name() {
    let ctx = Ctx::new();
    run("SERVICES name", hostile(SERVICE_OK), |h| {
        env_case(&ctx, &format!("svc.example.com:{}", h.trim()), &format!("{h}:10.0.0.5:8080"), h)
    });
}

#[test]
fn env_services_host() {
    let ctx = Ctx::new();
    run("SERVICES host", hostile(HOST_OK), |h| env_case(&ctx, "svc.example.com:app", &format!("app:{h}:8080"), h));
}

#[test]
fn env_services_port() {
    let ctx = Ctx::new();
    run("SERVICES port", hostile(PORT_OK), |h| {
        env_case(&ctx, "svc.example.com:app,v6.example.com:v6", &format!("app:10.0.0.5:{h},v6:[::1]:{h}"), h)
    });
}

// ---------------------------------------------------------------------------------------------
// JSON files
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum JsonField {
    DomainName,
    DomainService,
    DomainTls,
    DomainAllowItem,
    DomainAllowString,
    ServiceName,
    ServiceHost,
    ServicePort,
}

/// A combined file with one domain and one service, the hostile string in `field`.
fn json_case(ctx: &Ctx, field: JsonField, h: &str) -> Outcome {
    let mut domain = json!({ "name": "svc.example.com", "service": "app", "tls": "auto", "allow": ["10.8.0.0/24"] });
    let mut service = json!({ "name": "app", "host": "10.0.0.5", "port": 8080 });
    match field {
        JsonField::DomainName => domain["name"] = json!(h),
        JsonField::DomainService => {
            domain["service"] = json!(h);
            service["name"] = json!(h.trim());
        }
        JsonField::DomainTls => domain["tls"] = json!(h),
        JsonField::DomainAllowItem => domain["allow"] = json!(["192.168.0.0/16", h]),
        JsonField::DomainAllowString => domain["allow"] = json!(h),
        JsonField::ServiceName => {
            service["name"] = json!(h);
            domain["service"] = json!(h.trim());
        }
        JsonField::ServiceHost => service["host"] = json!(h),
        JsonField::ServicePort => service["port"] = json!(h),
    }
    // Serialised by serde_json, so the hostile string is always a valid JSON string.
    let text = serde_json::to_string_pretty(&json!({ "domains": [domain], "services": [service] })).unwrap();
    let path = Path::new("/etc/smart-proxy/routes.json");
    let table = RouteTable::build(vec![smart_proxy::sources::file::parse(path, &text, FileKind::Combined)]);
    ctx.check(&table, &[h]);
    let (rejected, routed) = (rejected(&table), routed(&table));
    let d = Entry::File("domains[0]".into());
    assert!(
        rejected.contains(&d) != routed.contains(&d),
        "domains[0]: rejected and routed must differ: {:#?}",
        table.diagnostics
    );
    if rejected.is_empty() {
        assert_eq!(table.sites.len(), 1);
        assert_eq!(table.upstreams.len(), 1, "the service is used");
        Outcome::Accepted
    } else {
        // The error names the field (or the route that names the rejected service).
        let expected = match field {
            JsonField::ServiceName | JsonField::ServiceHost | JsonField::ServicePort => "services[0].",
            _ => "domains[0].",
        };
        assert!(
            table.errors().any(|d| matches!(&d.origin, Origin::File { field, .. } if field.starts_with(expected))),
            "no error names {expected}*: {:#?}",
            table.diagnostics
        );
        Outcome::Rejected
    }
}

#[test]
fn json_domain_fields() {
    let fields: &[(&str, &'static [&'static str], JsonField)] = &[
        ("file domains[].name", DOMAIN_OK, JsonField::DomainName),
        ("file domains[].service", SERVICE_OK, JsonField::DomainService),
        ("file domains[].tls", TLS_OK, JsonField::DomainTls),
        ("file domains[].allow[]", CIDR_OK, JsonField::DomainAllowItem),
        ("file domains[].allow (string)", CIDR_OK, JsonField::DomainAllowString),
    ];
    for (name, valid, field) in fields {
        let ctx = Ctx::new();
        run(name, hostile(valid), |h| json_case(&ctx, *field, h));
    }
}

#[test]
fn json_service_fields() {
    let ctx = Ctx::new();
    run("file services[].name", hostile(SERVICE_OK), |h| json_case(&ctx, JsonField::ServiceName, h));
    let ctx = Ctx::new();
    run("file services[].host", hostile(HOST_OK), |h| json_case(&ctx, JsonField::ServiceHost, h));
}

/// `port` must be a JSON number, so every string is rejected; the message must stay bounded.
#[test]
fn json_service_port_strings() {
    let ctx = Ctx::new();
    let accepted_numbers = AtomicUsize::new(0);
    let cases = cases();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&hostile(PORT_OK), |h| {
            assert_eq!(
                json_case(&ctx, JsonField::ServicePort, &h),
                Outcome::Rejected,
                "the string {h:?} was taken as a port"
            );
            Ok(())
        })
        .unwrap();
    // JSON numbers: only whole numbers 1-65535 are ports.
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let numbers = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        (0i64..70_000).prop_map(|n| json!(n))
    ];
    runner
        .run(&numbers, |n| {
            let text = json!({ "domains": [{ "name": "svc.example.com", "service": "app" }], "services": [{ "name": "app", "host": "10.0.0.5", "port": n }] }).to_string();
            let table = RouteTable::build(vec![smart_proxy::sources::file::parse(Path::new("r.json"), &text, FileKind::Combined)]);
            ctx.check(&table, &[]);
            let whole = n.as_u64().filter(|p| (1..=65535).contains(p));
            match whole {
                Some(p) => {
                    accepted_numbers.fetch_add(1, Ordering::Relaxed);
                    assert_eq!(table.upstreams[0].backends[0].port.get() as u64, p);
                }
                None => assert!(table.sites.is_empty() && table.errors().count() > 0, "port {n} accepted"),
            }
            Ok(())
        })
        .unwrap();
    assert!(accepted_numbers.into_inner() > 0);
}

/// Hostile key names: an unknown field or top-level key is refused, and the printed diagnostic
/// that names it stays one bounded line.
#[test]
fn json_hostile_keys() {
    let ctx = Ctx::new();
    run_expecting("file unknown key", hostile(&["x", "extra", "Name"]), false, true, |h| {
        if ["name", "service", "allow", "tls", "domains", "services"].contains(&h.trim()) {
            return Outcome::Ignored;
        }
        let mut domain = serde_json::Map::new();
        domain.insert("name".into(), json!("svc.example.com"));
        domain.insert(h.to_string(), json!("1"));
        let mut root = serde_json::Map::new();
        root.insert("domains".into(), json!([domain]));
        root.insert(h.to_string(), json!(1));
        let text = serde_json::Value::Object(root).to_string();
        let path = Path::new("/etc/smart-proxy/routes.json");
        let table = RouteTable::build(vec![smart_proxy::sources::file::parse(path, &text, FileKind::Combined)]);
        ctx.check(&table, &[h]);
        assert!(table.sites.is_empty() && table.errors().count() >= 2, "{:#?}", table.diagnostics);
        Outcome::Rejected
    });
}

// ---------------------------------------------------------------------------------------------
// Container labels
// ---------------------------------------------------------------------------------------------

const P: &str = "smart-proxy";

fn label_settings() -> LabelSettings {
    LabelSettings { prefix: P.into(), nginx_networks: None }
}

/// One container `web` with `labels`; the hostile string `h` is somewhere in them.
fn label_case(ctx: &Ctx, labels: &[(String, String)], extra_network: Option<&str>, h: &str) -> (Outcome, RouteTable) {
    let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c: Container = container("web", [172, 20, 0, 5], &refs);
    if let Some(net) = extra_network {
        c.networks.insert(net.to_string(), NetworkAddress { ipv4: Some(Ipv4Addr::new(10, 9, 0, 5)), ipv6: None });
    }
    let table = RouteTable::build(vec![smart_proxy::sources::labels::routes(&[c], &label_settings())]);
    ctx.check(&table, &[h]);
    let errors = table.errors().count();
    let outcome = match (errors, table.sites.len()) {
        (0, 0) => Outcome::Ignored,
        (0, _) => Outcome::Accepted,
        (_, 0) => {
            assert!(table.upstreams.is_empty());
            Outcome::Rejected
        }
        (_, _) => panic!("a container with errors is routed: {table:#?}"),
    };
    for d in table.errors() {
        assert!(matches!(&d.origin, Origin::Container { name, .. } if name == "web"), "error for another origin: {d}");
    }
    (outcome, table)
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The hostile string as the value of each container-wide label.
#[test]
fn label_values() {
    let keys: &[(&str, &'static [&'static str])] = &[
        ("domains", DOMAIN_OK),
        ("port", PORT_OK),
        ("path", PATH_OK),
        ("service", SERVICE_OK),
        ("allow", CIDR_OK),
        ("tls", TLS_OK),
        ("network", NETWORK_OK),
    ];
    for (key, valid) in keys {
        let ctx = Ctx::new();
        run(&format!("label {P}.{key}"), hostile(valid), |h| {
            let mut ls = labels(&[("smart-proxy.domains", "app.example.com")]);
            ls.retain(|(k, _)| k != &format!("{P}.{key}"));
            ls.push((format!("{P}.{key}"), h.to_string()));
            let (outcome, table) = label_case(&ctx, &ls, None, h);
            assert_ne!(outcome, Outcome::Ignored, "{table:#?}");
            if outcome == Outcome::Rejected {
                let label = format!("{P}.{key}");
                assert!(
                    table.errors().any(|d| matches!(&d.origin, Origin::Container { label: l, .. } if l.as_deref() == Some(label.as_str()) || l.is_none())),
                    "no error names {label}: {:#?}",
                    table.diagnostics
                );
            }
            if outcome == Outcome::Accepted {
                // The shape the twin mirrors is the expected one: no value adds a site, a
                // location or a server.
                let got: BTreeSet<String> = table.sites.iter().map(|s| s.domain.to_string()).collect();
                let expected: BTreeSet<String> = if *key == "domains" {
                    h.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| DomainName::parse(s).unwrap().to_string())
                        .collect()
                } else {
                    ["app.example.com".to_string()].into()
                };
                assert_eq!(got, expected, "one site per listed domain");
                assert!(table.sites.iter().all(|s| s.locations.len() == 1));
                assert_eq!(table.upstreams.len(), 1);
                assert_eq!(table.upstreams[0].backends.len(), 1);
            }
            outcome
        });
    }
}

/// `enable` and `nginx` take booleans; `enable=false` and `nginx=true` leave the container out.
#[test]
fn label_switches() {
    for key in ["enable", "nginx"] {
        let ctx = Ctx::new();
        let ignored = AtomicUsize::new(0);
        run(&format!("label {P}.{key}"), hostile(BOOL_OK), |h| {
            let ls = labels(&[("smart-proxy.domains", "app.example.com"), (&format!("{P}.{key}"), h)]);
            let (outcome, _) = label_case(&ctx, &ls, None, h);
            let expected_off = match key {
                "enable" => parse_bool(h) == Ok(false),
                _ => parse_bool(h) == Ok(true),
            };
            if expected_off {
                ignored.fetch_add(1, Ordering::Relaxed);
                assert_eq!(outcome, Outcome::Ignored);
            } else {
                assert_ne!(outcome, Outcome::Ignored);
            }
            // `enable` is validated; `nginx` only matters when it says true.
            if key == "enable" && parse_bool(h).is_err() {
                assert_eq!(outcome, Outcome::Rejected);
            }
            outcome
        });
        assert!(ignored.into_inner() > 0, "{key}: the switch never took effect");
    }
}

/// The hostile string as the value of each named-route label, and as the route name itself.
#[test]
fn label_named_routes() {
    let keys: &[(&str, &'static [&'static str])] = &[
        ("domains", DOMAIN_OK),
        ("port", PORT_OK),
        ("path", PATH_OK),
        ("service", SERVICE_OK),
        ("allow", CIDR_OK),
        ("tls", TLS_OK),
        ("network", NETWORK_OK),
    ];
    for (key, valid) in keys {
        let ctx = Ctx::new();
        run(&format!("label {P}.api.{key}"), hostile(valid), |h| {
            let mut ls =
                labels(&[("smart-proxy.domains", "app.example.com"), ("smart-proxy.api.domains", "api.example.com")]);
            ls.retain(|(k, _)| k != &format!("{P}.api.{key}"));
            ls.push((format!("{P}.api.{key}"), h.to_string()));
            label_case(&ctx, &ls, None, h).0
        });
    }
    let ctx = Ctx::new();
    // Route names are not trimmed, so plain valid names are mixed in for the accepted side.
    let route = prop_oneof![3 => hostile(ROUTE_OK), 1 => "[a-z0-9-]{1,63}".prop_map(Hostile)];
    run("label <route> name", route, |h| {
        let ls = labels(&[
            ("smart-proxy.domains", "app.example.com"),
            (&format!("{P}.{h}.domains"), "api.example.com"),
            (&format!("{P}.{h}.port"), "9000"),
        ]);
        label_case(&ctx, &ls, None, h).0
    });
    let ctx = Ctx::new();
    // Label names are matched exactly: anything but a known key is an unknown label.
    run_expecting("label <key> name", hostile(&["domains", "port", "x"]), false, true, |h| {
        let ls = labels(&[
            ("smart-proxy.domains", "app.example.com"),
            (&format!("{P}.{h}"), "1"),
            (&format!("{P}.api.{h}"), "1"),
        ]);
        let (outcome, _) = label_case(&ctx, &ls, None, h);
        // (With a known key the value "1" is only valid for `domains`; a route `api` with
        // another key and no domains is rejected too.)
        assert_eq!(outcome == Outcome::Rejected, **h != *"domains", "{h:?}");
        outcome
    });
}

/// A network of that (hostile) name exists on the container, so the choice is accepted; the
/// network name never reaches the config.
#[test]
fn label_network_that_exists() {
    let ctx = Ctx::new();
    run_expecting("label network (existing)", hostile(NETWORK_OK), true, false, |h| {
        let ls = labels(&[("smart-proxy.domains", "app.example.com"), ("smart-proxy.network", h)]);
        let (outcome, table) = label_case(&ctx, &ls, Some(h.trim()), h);
        if outcome == Outcome::Accepted {
            let backend = &table.upstreams[0].backends[0];
            assert_eq!(backend.network.as_ref().unwrap().name, h.trim());
        }
        outcome
    });
}

/// The compose project/service labels make the default service (upstream) name.
#[test]
fn label_compose_names() {
    let ctx = Ctx::new();
    run("compose project/service", (hostile(SERVICE_OK), any::<bool>()), |(h, project)| {
        let key = if *project { "com.docker.compose.project" } else { "com.docker.compose.service" };
        let ls = labels(&[
            ("smart-proxy.domains", "app.example.com"),
            ("com.docker.compose.project", "demo"),
            ("com.docker.compose.service", "web"),
        ]);
        let mut ls: Vec<(String, String)> = ls.into_iter().filter(|(k, _)| k != key).collect();
        ls.push((key.to_string(), h.to_string()));
        label_case(&ctx, &ls, None, h).0
    });
}

/// Several hostile values at once, in every label.
#[test]
fn label_everything_at_once() {
    let ctx = Ctx::new();
    // Each value is hostile one time in three, so that a fair share of cases is accepted too.
    fn mostly_valid(valid: &'static [&'static str]) -> BoxedStrategy<Hostile> {
        prop_oneof![1 => hostile(valid), 2 => select(valid).prop_map(|v| Hostile(v.to_string()))].boxed()
    }
    let s = (
        mostly_valid(DOMAIN_OK),
        mostly_valid(PORT_OK),
        mostly_valid(PATH_OK),
        mostly_valid(SERVICE_OK),
        mostly_valid(CIDR_OK),
        mostly_valid(TLS_OK),
        mostly_valid(ROUTE_OK),
    );
    let accepted = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    runner
        .run(&s, |(d, port, path, service, allow, tls, route)| {
            let ls = vec![
                (format!("{P}.domains"), d.to_string()),
                (format!("{P}.port"), port.to_string()),
                (format!("{P}.path"), path.to_string()),
                (format!("{P}.service"), service.to_string()),
                (format!("{P}.allow"), allow.to_string()),
                (format!("{P}.tls"), tls.to_string()),
                (format!("{P}.{route}.domains"), d.to_string()),
                (format!("{P}.{route}.path"), path.to_string()),
            ];
            let all = [&d, &port, &path, &service, &allow, &tls, &route].map(|s| &**s).concat();
            let (outcome, _) = label_case(&ctx, &ls, None, &all);
            if outcome == Outcome::Accepted {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    eprintln!("labels all at once: {accepted} accepted");
    assert!(accepted > 0, "no case was accepted");
}

// ---------------------------------------------------------------------------------------------
// Diagnostics as printed (origin included)
// ---------------------------------------------------------------------------------------------

/// What `--dry-run`/`check` print for each problem: `error: <origin>: <message>`.
fn printed_is_one_bounded_line(d: &Diagnostic) -> Result<(), String> {
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

/// Values are echoed escaped and shortened in the printed diagnostics of every value field.
#[test]
fn printed_diagnostics_of_values_are_single_bounded_lines() {
    let long = format!("a.com;{}\n}}", "x\u{202e}".repeat(5000));
    let env = smart_proxy::sources::env::parse(
        Some(&format!("{long}:app,ok.com:{long}")),
        Some(&format!("app:{long}:80,b:h:{long}")),
    );
    let files = smart_proxy::sources::file::parse(
        Path::new("/r.json"),
        &json!({ "domains": [{ "name": long, "tls": long }, { "name": "a.com", "allow": [long] }],
                 "services": [{ "name": long, "host": "h", "port": 1 }, { "name": "b", "host": long, "port": 1 }] })
        .to_string(),
        FileKind::Combined,
    );
    let c = container(
        "web",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", &long),
            ("smart-proxy.port", &long),
            ("smart-proxy.path", &long),
            ("smart-proxy.tls", &long),
            ("smart-proxy.allow", &long),
            ("smart-proxy.service", &long),
        ],
    );
    let labels = smart_proxy::sources::labels::routes(&[c], &label_settings());
    let table = RouteTable::build(vec![labels, files]);
    assert!(table.errors().count() >= 8, "{:#?}", table.diagnostics);
    let env = RouteTable::build(vec![env]);
    assert!(env.errors().count() >= 4, "{:#?}", env.diagnostics);
    for d in table.errors().chain(env.errors()) {
        printed_is_one_bounded_line(d).unwrap_or_else(|e| panic!("{d:?}: {e}"));
    }
}

/// Regression: a JSON `port` given as a string was echoed whole in the message.
#[test]
fn json_string_port_message_is_bounded() {
    let text = json!({ "services": [{ "name": "app", "host": "h", "port": "8".repeat(10_000) }] }).to_string();
    let out = smart_proxy::sources::file::parse(Path::new("r.json"), &text, FileKind::Combined);
    check_diagnostic(&out.diagnostics[0]);
}

/// Regression: a rejected route name was echoed whole.
#[test]
fn route_name_message_is_bounded() {
    let key = format!("{P}.{}.domains", "A".repeat(10_000));
    let out = smart_proxy::sources::labels::routes(
        &[container("web", [172, 20, 0, 5], &[(&key, "a.com")])],
        &label_settings(),
    );
    check_diagnostic(&out.diagnostics[0]);
}

/// Regression: an unknown network was echoed whole.
#[test]
fn network_message_is_bounded() {
    let c = container(
        "web",
        [172, 20, 0, 5],
        &[("smart-proxy.domains", "a.com"), ("smart-proxy.network", &"n".repeat(10_000))],
    );
    let out = smart_proxy::sources::labels::routes(&[c], &label_settings());
    check_diagnostic(&out.diagnostics[0]);
}

/// Regression: label names and JSON keys were printed raw in the origin, so a newline in a label
/// name split the printed diagnostic into two lines (log forging).
#[test]
fn origin_prints_label_names_escaped() {
    let key = format!("{P}.x\nerror: forged line");
    let out = smart_proxy::sources::labels::routes(
        &[container("web", [172, 20, 0, 5], &[(&key, "1"), ("smart-proxy.domains", "a.com")])],
        &label_settings(),
    );
    printed_is_one_bounded_line(&out.diagnostics[0]).unwrap();
    let out = smart_proxy::sources::file::parse(
        Path::new("r.json"),
        &json!({ "domains": [{ "name": "a.com", "x\ny": 1 }] }).to_string(),
        FileKind::Combined,
    );
    printed_is_one_bounded_line(&out.diagnostics[0]).unwrap();
}

/// Regression: the env origin quoted the whole entry, so one 10,000-character entry printed a
/// 10,000-character line.
#[test]
fn env_origin_is_bounded() {
    let out = smart_proxy::sources::env::parse(Some(&"a;".repeat(5000)), None);
    printed_is_one_bounded_line(&out.diagnostics[0]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Fixed nasty examples through the real nginx -t
// ---------------------------------------------------------------------------------------------

/// Accepted-after-normalisation values of every kind, next to rejected injection attempts, load
/// in the real nginx; none of the rejected text reaches the config.
#[test]
fn nasty_examples_load_in_nginx() {
    let label63 = "a".repeat(63);
    let long = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
    let injections = [
        "a.com;include /etc/passwd",
        "b.com}\nserver{listen 81;}",
        "c.com\"",
        "d.com'",
        "$host.com",
        "e.com#",
        "f.com\\",
        "g.com\0",
        "h\u{202e}moc.com",
        "j.com\r\nx",
        "k\u{ff1b}.com",
    ];
    let accepted = [
        "  UPPER.Example.COM.  ",
        "\u{3000}bücher.example\u{2028}",
        "مثال.إختبار",
        "sof\u{ad}t.example",
        "x\u{3002}dot.example",
        "ｆｕｌｌ.example",
        // UTS 46 ignores zero-width space and soft hyphen: the name is the plain ASCII one.
        "zero\u{200b}width.example",
        "*.Wild.Example.com",
        long.as_str(),
    ];
    let mut domains: Vec<String> = accepted.iter().map(|d| format!("{d}:app")).collect();
    domains.extend(injections.iter().map(|d| format!("{d}:app")));
    domains.push("svc-v6.example:v6".into());
    domains.push("svc-dyn.example:dyn".into());
    domains.push("svc-odd.example:x.".into());
    let services =
        "app:10.0.0.5:0080,v6:[::FFFF:10.0.0.7]:65535,dyn:Backend-1.Internal.:1,x.:10.0.0.9:80,bad:h;x:80,bad2:h:80;";
    let env = smart_proxy::sources::env::parse(Some(&domains.join(",")), Some(services));

    let file = json!({
        "domains": [
            { "name": " File.Example ", "service": "filesvc", "tls": " OFF ", "allow": [" 10.1.2.3/8 ", "FD00::1/8", "::1"] },
            { "name": "inj.example", "service": "filesvc", "allow": ["10.0.0.0/8; allow all"] },
            { "name": "inj2.example", "tls": "off;" },
        ],
        "services": [ { "name": "filesvc", "host": "[2001:DB8::5]", "port": 8443 }, { "name": "inj", "host": "h\n}", "port": 80 } ]
    });
    let file =
        smart_proxy::sources::file::parse(Path::new("/etc/sp/routes.json"), &file.to_string(), FileKind::Combined);

    let good = container(
        "good",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", " Label.Example , www.label.example ,"),
            ("smart-proxy.path", " /A-b_c.d~e/ "),
            ("smart-proxy.allow", " 192.168.1.7 , 10.8.0.0/24,fd00:8::/64 "),
            ("smart-proxy.port", " 08080 "),
            ("smart-proxy.tls", " Off "),
            ("smart-proxy.api.domains", "label.example"),
            ("smart-proxy.api.path", "/api/"),
            ("smart-proxy.api.port", "9000"),
            ("smart-proxy.api.tls", "off"),
            ("smart-proxy.api.allow", "0.0.0.0/0"),
        ],
    );
    let bad =
        container("bad", [172, 20, 0, 6], &[("smart-proxy.domains", "bad.example"), ("smart-proxy.path", "/x;{}")]);
    let bad_route = container(
        "bad-route",
        [172, 20, 0, 7],
        &[("smart-proxy.domains", "br.example"), ("smart-proxy.a;b.domains", "c.example")],
    );
    let labels = smart_proxy::sources::labels::routes(&[good, bad, bad_route], &label_settings());

    let table = RouteTable::build(vec![labels, env, file]);
    let domains: Vec<&str> = table.sites.iter().map(|s| s.domain.as_str()).collect();
    for expected in [
        "upper.example.com",
        "xn--bcher-kva.example",
        "xn--mgbh0fb.xn--kgbechtv",
        "soft.example",
        "x.dot.example",
        "full.example",
        "zerowidth.example",
        "*.wild.example.com",
        long.as_str(),
        "file.example",
        "label.example",
        "www.label.example",
    ] {
        assert!(domains.contains(&expected), "{expected} missing from {domains:?}");
    }
    assert_eq!(table.sites.len(), 15, "{domains:?}\n{:#?}", table.diagnostics);
    let ctx = Ctx::new();
    ctx.check(&table, &[]);
    for local in [false, true] {
        let config = NginxSandbox::new().render_and_test(&table, local);
        for bad in [
            "passwd",
            "listen 81",
            "pwned",
            "\0",
            "\r",
            "\u{202e}",
            "\u{200b}",
            "\u{ff1b}",
            "allow all",
            "bad.example",
            "c.example",
            "br.example",
            "inj",
        ] {
            assert!(!config.contains(bad), "{bad:?} reached the config");
        }
    }
}

/// Wildcard, 253-character, IDN and IPv6 edge values, one per site, each loaded alone.
#[test]
fn edge_values_each_load_in_nginx() {
    let cases = [
        ("*.a.example", "app:[::1]:1"),
        ("xn--bcher-kva.example", "app:localhost.:65535"),
        ("a.b.c.d.e.f.g.h.example", "app:1.2.3:80"),
        ("1.example", "app:[::ffff:1.2.3.4]:80"),
    ];
    for (domain, services) in cases {
        let table =
            RouteTable::build(vec![smart_proxy::sources::env::parse(Some(&format!("{domain}:app")), Some(services))]);
        assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
        NginxSandbox::new().render_and_test(&table, false);
    }
}

/// A label path equal to the template's own ACME location, on a plain-HTTP (tls=off) site, would
/// make nginx -t fail with `duplicate location`: the path is reserved and refused with a clear
/// error, and the other containers still render and load.
#[test]
fn acme_challenge_path_is_reserved() {
    let c = container(
        "acme",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", "a.example"),
            ("smart-proxy.tls", "off"),
            ("smart-proxy.path", "/.well-known/acme-challenge/"),
        ],
    );
    let other =
        container("other", [172, 20, 0, 6], &[("smart-proxy.domains", "b.example"), ("smart-proxy.tls", "off")]);
    let table = crate::support::label_table(&[c, other]);
    assert_eq!(table.diagnostics.len(), 1, "{:?}", table.diagnostics);
    assert!(
        table.diagnostics[0].to_string().contains("reserved for certificate validation"),
        "{}",
        table.diagnostics[0]
    );
    assert_eq!(table.sites.len(), 1);
    NginxSandbox::new().render_and_test(&table, false);
}

/// The lexer and the comparison catch what they are meant to catch.
#[test]
fn the_structural_check_detects_injection() {
    let toks = tokenize("a b;c \"d;e\" {f '}';}\n# x;y\ng h${x}i;").unwrap();
    assert_eq!(skeleton(&toks).unwrap(), ["a/1;", "c/1{", "f/1;", "}", "g/1;"]);
    assert!(tokenize("a \"b").is_err());
    assert!(skeleton(&tokenize("a {").unwrap()).is_err());
    assert!(tokenize("a \"b\"c;").is_err());
    let mut subs = Subs::default();
    subs.add("twin0000d.example", "a.com");
    subs.add("sp_twin0000u", "sp_app");
    assert!(subs.matches("/live/twin0000d.example/x.pem", "/live/a.com/x.pem"));
    assert!(subs.matches("http://sp_twin0000u", "http://sp_app"));
    assert!(!subs.matches("twin0000d.example", "a.com;"));
    assert!(!subs.matches("twin0000d.example", "b.com"));
    let benign = "server_name twin0000d.example;\n";
    for injected in
        ["server_name a.com;include x;\n", "server_name a.com x;\n", "server_name a.com\n;\n", "server_name a.com#;\n"]
    {
        assert!(
            compare_structure(injected, benign, &subs, &["a.com"]).is_err(),
            "{injected:?} passed the structural check"
        );
    }
    assert_same_structure("server_name a.com;\n", benign, &subs, &["a.com"]);
}
