//! Diagnostics as printed (origin included): one bounded line each.

use super::*;

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
