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

mod checks;
mod diagnostics;
mod env;
mod file;
mod hostile;
mod labels;
mod nginx_t;
mod structure;
mod twin;

use self::{checks::*, hostile::*, structure::*, twin::*};
