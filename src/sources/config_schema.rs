//! The JSON config file's schema (`CONFIG_FILE`, `DOMAINS_CONFIG`, `SERVICES_CONFIG`), made from
//! the sections and fields `file.rs` reads ([`file::SECTIONS`]): a JSON Schema
//! (`docs/config.schema.json`, for editors and validators) and the field tables of
//! `docs/config-file.md`. Both files are checked by a test; `UPDATE_DOCS=1 cargo test --lib
//! config_schema` rewrites them.
//!
//! The schema states the structure (keys, fields, JSON types, required, port range, tls values);
//! the value grammars (host names, service names, CIDR ranges) are in its descriptions, in the
//! words of `grammar::allowed` that the parser's messages use.

use serde_json::{json, Map, Value};

use super::file::{Field, FieldKind, SECTIONS};
use crate::routes::access::allowed as access;
use crate::routes::grammar::allowed;
use crate::routes::policy::allowed as policy_allowed;

/// The JSON type and the grammar of one kind of field, in words.
fn kind(kind: FieldKind) -> (&'static str, String) {
    match kind {
        FieldKind::Domain => ("string", format!("a host name: {}", allowed::DOMAIN)),
        FieldKind::Service => ("string", allowed::SERVICE.to_string()),
        FieldKind::Host => ("string", allowed::HOST.to_string()),
        FieldKind::Port => ("integer", allowed::PORT.to_string()),
        FieldKind::Tls => ("string", allowed::TLS.to_string()),
        FieldKind::Allow => (
            "array of strings, or string",
            format!("a list, each {}; or one string with a comma list of them", allowed::CIDR),
        ),
        FieldKind::Size => ("string, or integer", policy_allowed::SIZE.to_string()),
        FieldKind::Timeout => ("string", policy_allowed::TIMEOUT.to_string()),
        FieldKind::OnOff => ("boolean, or string", policy_allowed::ON_OFF.to_string()),
        FieldKind::Health => ("string", policy_allowed::HEALTH.to_string()),
        FieldKind::Hsts => ("string", policy_allowed::HSTS.to_string()),
        FieldKind::Proto => ("string", policy_allowed::PROTO.to_string()),
        FieldKind::BackendVerify => ("string, or boolean", policy_allowed::BACKEND_VERIFY.to_string()),
        FieldKind::Path => ("string", format!("an absolute path that {}", allowed::PATH)),
        FieldKind::RedirectUrl => ("string", policy_allowed::REDIRECT.to_string()),
        FieldKind::RedirectCode => ("integer, or string", policy_allowed::REDIRECT_CODE.to_string()),
        FieldKind::Bool => ("boolean", allowed::BOOL.to_string()),
        FieldKind::Www => ("string", policy_allowed::WWW.to_string()),
        FieldKind::Auth => ("string", access::AUTH.to_string()),
        FieldKind::Users => ("array of strings, or string", format!("a list, or {}", access::USERS)),
        FieldKind::UsersFile => ("string", access::USERS_FILE.to_string()),
        FieldKind::Url => ("string", access::URL.to_string()),
        FieldKind::HeaderNames => ("array of strings, or string", format!("a list, or {}", access::HEADER_NAMES)),
        FieldKind::Paths => ("array of strings, or string", format!("a list, or {}", access::BYPASS)),
        FieldKind::Rate => ("string", access::RATE.to_string()),
        FieldKind::Burst => ("integer, or string", access::BURST.to_string()),
        FieldKind::RateKey => ("string", access::RATE_KEY.to_string()),
        FieldKind::Headers => (
            "object",
            format!(
                "request and response, each an object of header names ({}) and values ({})",
                policy_allowed::HEADER_NAME,
                policy_allowed::HEADER_VALUE
            ),
        ),
    }
}

fn field_schema(field: &Field) -> Value {
    let (_, grammar) = kind(field.kind);
    let mut schema = match field.kind {
        FieldKind::Domain | FieldKind::Service | FieldKind::Host => json!({ "type": "string" }),
        FieldKind::Port => json!({ "type": "integer", "minimum": 1, "maximum": 65535 }),
        FieldKind::Tls => json!({ "enum": ["auto", "off"] }),
        FieldKind::Allow => json!({ "type": ["array", "string"], "items": { "type": "string" } }),
        FieldKind::Size => json!({ "type": ["string", "integer"], "minimum": 0 }),
        FieldKind::Timeout
        | FieldKind::Health
        | FieldKind::Hsts
        | FieldKind::UsersFile
        | FieldKind::Url
        | FieldKind::Rate
        | FieldKind::RateKey => json!({ "type": "string" }),
        FieldKind::Auth => json!({ "enum": ["basic", "forward", "off"] }),
        FieldKind::Users | FieldKind::HeaderNames | FieldKind::Paths => {
            json!({ "type": ["array", "string"], "items": { "type": "string" } })
        }
        FieldKind::Burst => json!({ "type": ["integer", "string"], "minimum": 0, "maximum": 100000 }),
        FieldKind::OnOff => json!({ "type": ["boolean", "string"] }),
        FieldKind::Proto => json!({ "enum": ["http", "https", "h2c", "grpc", "grpcs", "fastcgi", "uwsgi"] }),
        FieldKind::BackendVerify => json!({ "type": ["string", "boolean"] }),
        FieldKind::Path | FieldKind::RedirectUrl => json!({ "type": "string" }),
        FieldKind::RedirectCode => json!({ "enum": [301, 302, 307, 308, "301", "302", "307", "308"] }),
        FieldKind::Bool => json!({ "type": "boolean" }),
        FieldKind::Www => json!({ "enum": ["to-apex", "to-www"] }),
        FieldKind::Headers => {
            let names = json!({ "type": "object", "additionalProperties": { "type": "string" } });
            json!({
                "type": "object",
                "properties": { "request": names, "response": names },
                "additionalProperties": false,
            })
        }
    };
    if !field.required {
        // An optional field may be null: the reader takes it as absent.
        match schema.get_mut("type") {
            Some(Value::String(t)) => schema["type"] = json!([t.clone(), "null"]),
            Some(Value::Array(types)) => types.push(json!("null")),
            _ => schema["enum"].as_array_mut().expect("a field schema has a type or an enum").push(Value::Null),
        }
    }
    let doc = field.doc.replace('`', "");
    schema["description"] = json!(format!("{doc}. Allowed: {grammar}"));
    schema
}

/// The JSON Schema (draft 2020-12) of a `CONFIG_FILE`; a `DOMAINS_CONFIG` or `SERVICES_CONFIG`
/// file is the same with only its one key.
pub fn json_schema() -> Value {
    let mut properties = Map::new();
    let mut defs = Map::new();
    for section in SECTIONS {
        properties.insert(
            section.key.to_string(),
            json!({
                "description": section.doc.replace('`', ""),
                "type": "array",
                "items": { "$ref": format!("#/$defs/{}", section.entry) },
            }),
        );
        let fields: Map<String, Value> = section.fields.iter().map(|f| (f.name.to_string(), field_schema(f))).collect();
        let required: Vec<&str> = section.fields.iter().filter(|f| f.required).map(|f| f.name).collect();
        defs.insert(
            section.entry.to_string(),
            json!({
                "type": "object",
                "properties": fields,
                "required": required,
                "additionalProperties": false,
            }),
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "nginx-smart-proxy JSON config file",
        "description": "CONFIG_FILE holds domains and services; DOMAINS_CONFIG only domains; SERVICES_CONFIG only \
                        services. Generated from src/sources/file.rs; see docs/config-file.md.",
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
        "$defs": defs,
    })
}

/// `docs/config.schema.json`'s content.
pub fn json_schema_text() -> String {
    serde_json::to_string_pretty(&json_schema()).expect("the schema serializes") + "\n"
}

/// The field tables of `docs/config-file.md` (Markdown).
pub fn reference() -> String {
    let mut out = String::new();
    for (i, section) in SECTIONS.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("`{}`: {}.\n\n", section.key, section.doc));
        out.push_str("| field | JSON type | required | meaning; allowed |\n|---|---|---|---|\n");
        for field in section.fields {
            let (json_type, grammar) = kind(field.kind);
            let required = if field.required { "yes" } else { "no (may be `null`)" };
            out.push_str(&format!("| `{}` | {json_type} | {required} | {}; {grammar} |\n", field.name, field.doc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sources::file::{parse, FileKind};

    fn root() -> &'static str {
        env!("CARGO_MANIFEST_DIR")
    }

    /// `docs/config.schema.json` is [`json_schema_text`], and `docs/config-file.md` holds
    /// [`reference`] between its table markers; `UPDATE_DOCS=1` rewrites both.
    #[test]
    fn the_docs_are_the_schema() {
        let update = std::env::var_os("UPDATE_DOCS").is_some();
        let path = format!("{}/docs/config.schema.json", root());
        let text = json_schema_text();
        if update {
            std::fs::write(&path, &text).unwrap();
        } else {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(on_disk, text, "{path} is out of date: run UPDATE_DOCS=1 cargo test --lib config_schema");
        }
        let path = format!("{}/docs/config-file.md", root());
        let doc = std::fs::read_to_string(&path).unwrap();
        let (start, end) = ("<!-- table -->\n", "<!-- end of table -->");
        let a = doc.find(start).expect("docs/config-file.md has a table start marker") + start.len();
        let b = doc.find(end).expect("docs/config-file.md has a table end marker");
        let table = reference();
        if update {
            std::fs::write(&path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
            return;
        }
        assert_eq!(&doc[a..b], table, "{path} is out of date: run UPDATE_DOCS=1 cargo test --lib config_schema");
    }

    /// A small validator for the keywords [`json_schema`] uses (and a check that it uses no
    /// other): `$ref` to `#/$defs/..`, `type`, `enum`, `properties`, `required`,
    /// `additionalProperties: false`, `items`, `minimum`, `maximum`. Returns the errors.
    fn validate(schema: &Value, root: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.strip_prefix("#/$defs/").expect("only local $defs references");
            return validate(&root["$defs"][name], root, value, at, errors);
        }
        let type_ok = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            other => panic!("unknown type {other}"),
        };
        match schema.get("type") {
            Some(Value::String(t)) if !type_ok(t) => return errors.push(format!("{at}: not a {t}")),
            Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap())) => {
                return errors.push(format!("{at}: not one of {ts:?}"))
            }
            _ => {}
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                errors.push(format!("{at}: not one of {options:?}"));
            }
        }
        if let (Some(n), Some(min)) = (value.as_f64(), schema.get("minimum").and_then(Value::as_f64)) {
            if n < min {
                errors.push(format!("{at}: below {min}"));
            }
        }
        if let (Some(n), Some(max)) = (value.as_f64(), schema.get("maximum").and_then(Value::as_f64)) {
            if n > max {
                errors.push(format!("{at}: above {max}"));
            }
        }
        if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
            for (i, item) in list.iter().enumerate() {
                validate(items, root, item, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !object.contains_key(name.as_str().unwrap()) {
                    errors.push(format!("{at}.{}: missing", name.as_str().unwrap()));
                }
            }
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(schema) => validate(schema, root, field, &format!("{at}.{name}"), errors),
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        errors.push(format!("{at}.{name}: not allowed"))
                    }
                    None => {}
                }
            }
        }
    }

    fn errors(value: &Value) -> Vec<String> {
        let schema = json_schema();
        let mut errors = Vec::new();
        validate(&schema, &schema, value, "$", &mut errors);
        errors
    }

    /// The validator above knows every keyword the schema uses.
    #[test]
    fn the_schema_uses_only_keywords_the_test_validator_knows() {
        fn walk(value: &Value, in_properties: bool) {
            let Some(object) = value.as_object() else { return };
            for (key, child) in object {
                if !in_properties {
                    const KNOWN: &[&str] = &[
                        "$schema",
                        "title",
                        "description",
                        "type",
                        "properties",
                        "additionalProperties",
                        "$defs",
                        "items",
                        "$ref",
                        "required",
                        "enum",
                        "minimum",
                        "maximum",
                    ];
                    assert!(KNOWN.contains(&key.as_str()), "keyword {key:?}");
                }
                let names = !in_properties && (key == "properties" || key == "$defs");
                if key != "enum" && key != "required" {
                    walk(child, names);
                }
            }
        }
        walk(&json_schema(), false);
    }

    /// The example files are valid by the schema, and the parser reads them without a diagnostic.
    #[test]
    fn the_examples_are_valid() {
        let path = format!("{}/examples/config.json", root());
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(errors(&value), Vec::<String>::new(), "{path}");
        let out = parse(Path::new(&path), &text, FileKind::Combined);
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert!(!out.routes.is_empty() && !out.services.is_empty());

        // The README's JSON snippet too.
        let readme = std::fs::read_to_string(format!("{}/README.md", root())).unwrap();
        let after = readme.split("JSON (see `examples/config.json`)").nth(1).expect("README's JSON section");
        let snippet = after.split("```json\n").nth(1).and_then(|s| s.split("```").next()).expect("a json block");
        let value: Value = serde_json::from_str(snippet).unwrap();
        assert_eq!(errors(&value), Vec::<String>::new(), "README: {snippet}");
        assert!(parse(Path::new("README.md"), snippet, FileKind::Combined).diagnostics.is_empty());
    }

    /// The schema and the parser agree on structure: what the schema accepts the parser reads
    /// without a diagnostic, and what it rejects the parser reports. (Value grammars, such as
    /// a host name's characters, are only described in the schema.)
    #[test]
    fn the_schema_and_the_parser_agree() {
        let cases = [
            (r#"{}"#, true),
            (r#"{"domains": [], "services": []}"#, true),
            (r#"{"domains": [{"name": "a.com"}]}"#, true),
            (r#"{"domains": [{"name": "a.com", "service": null, "allow": null, "tls": null}]}"#, true),
            (r#"{"domains": [{"name": "a.com", "allow": "10.0.0.0/8, ::1", "tls": "off"}]}"#, true),
            (r#"{"domains": [{"name": "a.com", "allow": ["10.0.0.0/8"], "tls": "auto"}]}"#, true),
            (r#"{"services": [{"name": "s", "host": "10.0.0.1", "port": 65535}]}"#, true),
            (r#"[]"#, false),
            (r#"{"domain": []}"#, false),
            (r#"{"domains": {}}"#, false),
            (r#"{"domains": ["a.com"]}"#, false),
            (r#"{"domains": [{}]}"#, false),
            (r#"{"domains": [{"name": null}]}"#, false),
            (r#"{"domains": [{"name": 1}]}"#, false),
            (r#"{"domains": [{"name": "a.com", "servce": "s"}]}"#, false),
            (r#"{"domains": [{"name": "a.com", "service": 1}]}"#, false),
            (r#"{"domains": [{"name": "a.com", "tls": "on"}]}"#, false),
            (r#"{"domains": [{"name": "a.com", "allow": 10}]}"#, false),
            (r#"{"domains": [{"name": "a.com", "allow": [10]}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h"}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h", "port": null}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h", "port": "80"}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h", "port": 0}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h", "port": 65536}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h", "port": 80.5}]}"#, false),
            (r#"{"services": [{"name": "s", "port": 80}]}"#, false),
            (r#"{"services": [{"host": "h", "port": 80}]}"#, false),
            (r#"{"services": [{"name": "s", "host": "h", "port": 80, "weight": 1}]}"#, false),
        ];
        for (text, valid) in cases {
            let value: Value = serde_json::from_str(text).unwrap();
            let schema_errors = errors(&value);
            assert_eq!(schema_errors.is_empty(), valid, "schema on {text}: {schema_errors:?}");
            let out = parse(Path::new("c.json"), text, FileKind::Combined);
            assert_eq!(out.diagnostics.is_empty(), valid, "parser on {text}: {:?}", out.diagnostics);
        }
    }

    /// Each field of the tables is read: a required one missing is reported as missing, and
    /// no field of the tables is called unknown.
    #[test]
    fn the_parser_reads_every_field_of_the_tables() {
        let full = |fields: &[Field]| -> Map<String, Value> {
            fields
                .iter()
                .map(|f| {
                    let value = match f.kind {
                        FieldKind::Domain => json!("a.com"),
                        FieldKind::Service | FieldKind::Host => json!("s"),
                        FieldKind::Port => json!(80),
                        FieldKind::Tls => json!("off"),
                        FieldKind::Allow => json!(["10.0.0.0/8"]),
                        FieldKind::Size => json!("10g"),
                        FieldKind::Timeout => json!("5m"),
                        FieldKind::OnOff => json!(false),
                        FieldKind::Health => json!("/healthz"),
                        FieldKind::Hsts => json!("31536000,includeSubDomains"),
                        FieldKind::Proto => json!("fastcgi"),
                        FieldKind::BackendVerify => json!(false),
                        FieldKind::Path => json!("/app/public"),
                        FieldKind::RedirectUrl => json!("https://example.org"),
                        FieldKind::RedirectCode => json!(308),
                        FieldKind::Bool => json!(false),
                        FieldKind::Www => json!("to-apex"),
                        // `off` ignores the other auth fields (each still parsed), which could
                        // not all hold at once.
                        FieldKind::Auth => json!("off"),
                        FieldKind::Users => json!(["alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"]),
                        FieldKind::UsersFile => json!("/run/secrets/htpasswd"),
                        FieldKind::Url => json!("http://auth:9091/"),
                        FieldKind::HeaderNames => json!("Remote-User,Remote-Groups"),
                        FieldKind::Paths => json!(["/public/"]),
                        FieldKind::Rate => json!("10r/s"),
                        FieldKind::Burst => json!(5),
                        FieldKind::RateKey => json!("header:X-Api-Key"),
                        FieldKind::Headers => json!({
                            "request": { "X-Tenant": "acme" },
                            "response": { "Content-Security-Policy": "default-src 'self'; script-src 'nonce-$x'" },
                        }),
                    };
                    (f.name.to_string(), value)
                })
                .collect()
        };
        // A redirecting domain takes no service, allow list or policy: its fields are read apart.
        let redirecting = |f: &&Field| f.name.starts_with("redirect");
        let domain_fields = SECTIONS.iter().find(|s| s.key == "domains").unwrap().fields;
        let redirect_fields: Vec<Field> =
            domain_fields.iter().filter(|f| f.name == "name" || redirecting(f)).copied().collect();
        let redirect_entry = full(&redirect_fields);
        let text = json!({ "domains": [redirect_entry] }).to_string();
        let out = parse(Path::new("c.json"), &text, FileKind::Combined);
        assert!(out.diagnostics.is_empty(), "{text}: {:?}", out.diagnostics);
        assert!(out.routes[0].redirect.is_some());
        for section in SECTIONS {
            let fields: Vec<Field> = section.fields.iter().filter(|f| !redirecting(f)).copied().collect();
            let entry = full(&fields);
            let text = json!({ section.key: [entry] }).to_string();
            let out = parse(Path::new("c.json"), &text, FileKind::Combined);
            assert!(out.diagnostics.is_empty(), "{text}: {:?}", out.diagnostics);
            for field in section.fields.iter().filter(|f| f.required) {
                let mut entry = entry.clone();
                entry.remove(field.name);
                let text = json!({ section.key: [entry] }).to_string();
                let out = parse(Path::new("c.json"), &text, FileKind::Combined);
                let messages: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
                let expected = format!("{}[0].{}: missing", section.key, field.name);
                assert!(messages.iter().any(|m| m.contains(&expected)), "{text}: {messages:?}");
            }
        }
    }
}
