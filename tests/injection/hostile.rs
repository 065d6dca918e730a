//! Hostile strings: the values every property feeds, and the valid ones they start from or mix with.

use super::*;

/// Fragments an attacker (or a typo) could put into a value.
pub(super) const NASTY: &[&str] = &[
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
pub(super) const PAD: &[&str] = &["", "", " ", "\t", "\n", "\r\n", "  \t ", "\u{3000}", "\u{2028}", "\u{85}", "\u{a0}"];

/// Units repeated to build very long values.
pub(super) const LONG_UNITS: &[&str] =
    &["a", "a.", "a;", " ", "\n", "\u{ad}", "\u{200b}", "ü", ";include /etc/passwd", "0", "/a", "1,"];

pub(super) const DOMAIN_OK: &[&str] = &[
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
pub(super) const SERVICE_OK: &[&str] = &["app", "App_1", "a.b-c", "1", "x.", "web-9"];
pub(super) const HOST_OK: &[&str] =
    &["10.0.0.5", "[::1]", "[2001:DB8::5]", "Api.Internal", "host-1.svc.", "localhost", "1.2.3", "ünï.example"];
pub(super) const PORT_OK: &[&str] = &["8080", "1", "65535", "0080", "443"];
pub(super) const PATH_OK: &[&str] = &["/", "/api/", "/A-b_c.d~e/", "/v1", "/.well-known/x"];
pub(super) const CIDR_OK: &[&str] =
    &["10.0.0.0/8", "192.168.1.7", "fd00::/8", "10.1.2.3/8", "::1", "0.0.0.0/0", "10.8.0.0/24, fd00:8::/64"];
pub(super) const TLS_OK: &[&str] = &["auto", "off", "OFF", "", "Auto"];
pub(super) const BOOL_OK: &[&str] = &["true", "false", "1", "0", "yes", "no", "on", "off", "TRUE"];
pub(super) const ROUTE_OK: &[&str] = &["api", "admin-2", "0"];
pub(super) const NETWORK_OK: &[&str] = &["proxy"];
pub(super) const SIZE_OK: &[&str] = &["0", "50m", "10G", "512", "1024g"];
pub(super) const TIMEOUT_OK: &[&str] = &["1s", "300s", "5m", "24h", "1H"];
pub(super) const HEALTH_OK: &[&str] = &["/health", "/healthz", "off", "/a/b-c_d.e~f"];
pub(super) const HSTS_OK: &[&str] = &["off", "63072000", "31536000,includeSubDomains,preload", "0"];
pub(super) const PROTO_OK: &[&str] = &["http", "https", "h2c", "GRPC", "grpcs", "fastcgi", "uwsgi"];
pub(super) const VERIFY_OK: &[&str] = &["off", "on", "app.internal", "B\u{fc}cher.example"];
pub(super) const REDIRECT_OK: &[&str] =
    &["https://example.org", "http://new.example.com:8080/a/b", "https://x.example/$y;z(1)*+,!=&%41", "https://[::1]/"];
pub(super) const REDIRECT_CODE_OK: &[&str] = &["301", "302", "307", "308"];
pub(super) const WWW_OK: &[&str] = &["to-apex", "TO-WWW"];

pub(super) const AUTH_OK: &[&str] = &["basic", "BASIC", "off", "none"];
pub(super) const USERS_OK: &[&str] = &[
    "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/",
    "bob:$2y$05$J5mZNPetUmlbmTXilq3h6exE6WITQMyrF1QGDM/UhTTnopgSJk0NS, carol:{SHA}hsAaMBat8aKiQgxhKhAqvbXOPbw=",
    "a.b@c+d-e_f:$6$s4lt$KASHin8zyVGU/8snfsKoXrzKD3tcgaxu3WhIYHm3kwoXl4Brx3/eZ1IopFTJFuw/7WLHZOeFSdxFNrGYqr0Vn/",
];
pub(super) const USERS_FILE_OK: &[&str] = &["/run/secrets/htpasswd", "/a/b-c_d.e+f@g"];
pub(super) const URL_OK: &[&str] =
    &["http://auth:9091/api/verify", r#"https://a.example/x?q='1'&r=$s;{t}"u"\v"#, "HTTP://[::1]:9000"];
pub(super) const HEADER_NAMES_OK: &[&str] = &["Remote-User", "Remote-User, remote-groups", "X-1"];
pub(super) const BYPASS_OK: &[&str] = &["/public/", "/a/,/b.c_d~e-f"];
pub(super) const RATE_OK: &[&str] = &["10r/s", "600r/m", "off", "1R/M"];
pub(super) const BURST_OK: &[&str] = &["0", "5", "100000"];
pub(super) const RATE_KEY_OK: &[&str] = &["ip", "IP", "header:X-Api-Key", "Header:x-1"];

pub(super) use smart_proxy::sources::label_schema::companions;

/// A generated value. Its `Debug` (used in failure reports) is escaped and shortened, so a
/// failing 10,000-character case stays readable.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Hostile(pub(super) String);

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
pub(super) fn hostile(valid: &'static [&'static str]) -> BoxedStrategy<Hostile> {
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
