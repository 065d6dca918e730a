//! The command line as a user meets it: `--dry-run`, `check`, exit codes and error messages.

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

/// The binary with a clean environment: no Docker, a fixed nginx version, and the given env.
fn cmd(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::cargo_bin("nginx-smart-proxy").unwrap();
    cmd.env_clear()
        .env("NO_DOCKER", "true")
        .env("NGINX_VERSION", "1.22.1")
        .env("RESOLVER", "127.0.0.11")
        .env("CERTS_DIR", "/nonexistent-certs");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `--dry-run` with [`cmd`]'s environment, run.
fn dry_run(env: &[(&str, &str)]) -> assert_cmd::assert::Assert {
    cmd(env).arg("--dry-run").assert()
}

/// `--dry-run --config-file <file>` with a routes file holding `json`: the file's name as the
/// messages show it, and the run.
fn dry_run_file(json: &str) -> (String, assert_cmd::assert::Assert) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json).unwrap();
    let assert = cmd(&[]).arg("--dry-run").arg("--config-file").arg(&file).assert();
    (file.display().to_string(), assert)
}

const SERVICES: &str = "app1:app1:8080,app2:app2:8081,api:api:3000";

#[test]
fn dry_run_prints_the_config() {
    let out = dry_run(&[("DOMAINS", "app1.com:app1,app2.com:app2,status.com"), ("SERVICES", SERVICES)])
        .success()
        .stdout(contains("server_name app1.com;").and(contains("server_name status.com;")))
        .stdout(contains("503 \"Service not configured for this domain\\n\";"))
        .stderr(contains("a self-signed placeholder would be written").and(contains("nothing written")));
    // status.com has no service: its location answers 503, and its server's error_page the text.
    let config = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let status = config.rsplit("server_name status.com;").next().expect("status.com's HTTPS server");
    let status = &status[..status.find("\nserver {").unwrap_or(status.len())];
    assert!(status.contains("error_page 404 429 502 503 504 @smartproxy_error;"), "{status}");
    assert!(status.contains("location / {\n        # No service") && status.contains("return 503;"), "{status}");
}

#[test]
fn dry_run_output_file_and_local_mode() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.conf");
    cmd(&[("DOMAINS", "app1.localhost:app1"), ("SERVICES", SERVICES), ("LOCAL", "true")])
        .args(["--dry-run", "--output"])
        .arg(&out)
        .assert()
        .success()
        .stdout("");
    let config = std::fs::read_to_string(&out).unwrap();
    assert!(config.contains("server_name app1.localhost;"));
    assert!(!config.contains("ssl"));
}

#[test]
fn unknown_service_lists_the_available_ones() {
    dry_run(&[("DOMAINS", "app1.com:app1,app2.com:nope"), ("SERVICES", SERVICES)])
        .code(1)
        .stdout(contains("server_name app1.com;"))
        .stderr(contains(
            r#"DOMAINS entry 2 "app2.com:nope": unknown service "nope". Available services: api, app1, app2"#,
        ));
}

#[test]
fn bad_ports_say_what_is_allowed() {
    dry_run(&[("DOMAINS", "a.com:a,b.com:b,c.com:c"), ("SERVICES", "a:a:invalid,b:b:99999,c:c:80")])
        .code(1)
        .stdout(contains("server_name c.com;"))
        .stderr(contains(
            r#"SERVICES entry 1 "a:a:invalid": port "invalid" is not a number; must be a whole number from 1 to 65535"#,
        ))
        .stderr(contains(r#"SERVICES entry 2 "b:b:99999": port 99999 is out of range; must be 1-65535"#));
}

#[test]
fn a_route_to_a_service_with_an_error_points_at_that_error() {
    // The service's entry has the one real error; the route using it says why it is left out
    // instead of calling the service unknown.
    dry_run(&[("DOMAINS", "app1.com:app1,ok.com"), ("SERVICES", "app1:app1:80800")])
        .code(1)
        .stdout(contains("server_name ok.com;").and(contains("server_name app1.com;").not()))
        .stderr(contains(r#"SERVICES entry 1 "app1:app1:80800": port 80800 is out of range; must be 1-65535"#))
        .stderr(contains(
            r#"DOMAINS entry 1 "app1.com:app1": service "app1" is left out because of the error at SERVICES entry 1 "app1:app1:80800"; this route is served once that is fixed"#,
        ))
        .stderr(contains("unknown service").not().and(contains("No services are defined").not()));
    let (shown, assert) = dry_run_file(
        r#"{"domains":[{"name":"a.com","service":"a"}],"services":[{"name":"a","host":"a","port":"8080"}]}"#,
    );
    assert
        .code(1)
        .stderr(contains(format!(
            r#"file {shown}, domains[0]: service "a" is left out because of the error at file {shown}, services[0].port;"#
        )))
        .stderr(contains("unknown service").not());
}

#[test]
fn a_missing_config_file_is_named_with_its_setting() {
    for (var, flag) in [
        ("CONFIG_FILE", "--config-file"),
        ("DOMAINS_CONFIG", "--domains-config"),
        ("SERVICES_CONFIG", "--services-config"),
    ] {
        dry_run(&[("DOMAINS", "ok.com"), (var, "/nonexistent/routes.json")])
            .code(1)
            .stdout(contains("server_name ok.com;"))
            .stderr(contains(format!(
                "error: file /nonexistent/routes.json: cannot read it: No such file or directory (os error 2); \
                 it is named by {var} (or {flag})"
            )))
            .stderr(contains("(file)").not());
    }
}

#[test]
fn duplicate_empty_and_bad_domains() {
    dry_run(&[("DOMAINS", "a.com:app1,a.com:app2,:app1,bad_name.com:app1, ,ok.com"), ("SERVICES", SERVICES)])
        .code(1)
        .stdout(contains("server_name ok.com;").and(contains("server_name a.com;")))
        .stderr(contains(r#"DOMAINS entry 2 "a.com:app2": duplicate domain a.com: already defined by DOMAINS entry 1"#))
        .stderr(contains(r#"DOMAINS entry 3 ":app1": empty domain name"#))
        .stderr(contains(r#"DOMAINS entry 4 "bad_name.com:app1": domain "bad_name.com" is not a valid host name: it contains the character '_'"#));
}

#[test]
fn international_names_become_punycode() {
    dry_run(&[("DOMAINS", "bücher.example:app1"), ("SERVICES", SERVICES)])
        .success()
        .stdout(contains("server_name xn--bcher-kva.example;"));
}

#[test]
fn json_file_errors_name_file_and_field() {
    let (shown, assert) = dry_run_file(
        r#"{"domains":[{"name":"app1.com","service":"app1"},{"name":"x.com","service":"ghost"}],
            "services":[{"name":"app1","host":"app1","port":8080},{"name":"bad","host":"h","port":0}]}"#,
    );
    assert
        .code(1)
        .stdout(contains("server_name app1.com;"))
        .stderr(contains(format!("file {shown}, services[1].port: port 0 is out of range; must be 1-65535")))
        .stderr(contains(format!(r#"file {shown}, domains[1]: unknown service "ghost". Available services: app1"#)));
}

#[test]
fn split_files_and_examples() {
    let dir = tempfile::tempdir().unwrap();
    let domains = dir.path().join("domains.json");
    let services = dir.path().join("services.json");
    std::fs::write(&domains, r#"{"domains":[{"name":"a.com","service":"a"}]}"#).unwrap();
    std::fs::write(&services, r#"{"services":[{"name":"a","host":"10.0.0.1","port":80}]}"#).unwrap();
    cmd(&[])
        .arg("--dry-run")
        .env("DOMAINS_CONFIG", &domains)
        .env("SERVICES_CONFIG", &services)
        .assert()
        .success()
        .stdout(contains("server 10.0.0.1:80;"));
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.json");
    cmd(&[]).args(["--dry-run", "--config-file", examples]).assert().success();
}

#[test]
fn check_prints_the_route_table() {
    cmd(&[("DOMAINS", "app1.com:app1,status.com,zz.com:nope"), ("SERVICES", SERVICES)])
        .arg("check")
        .assert()
        .code(1)
        .stdout(contains("DOMAIN").and(contains("SERVERS")))
        .stdout(contains("app1.com").and(contains("app1:8080")).and(contains("DOMAINS entry 1")))
        .stdout(contains("- (answers 503)"))
        .stdout(contains("Errors (1):"));
}

/// `config-schema` prints the JSON Schema that `docs/config.schema.json` holds.
#[test]
fn config_schema_prints_the_documented_schema() {
    let output = cmd(&[]).arg("config-schema").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let documented = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.schema.json")).unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&documented));
}

#[test]
fn check_json_is_machine_readable() {
    let output = cmd(&[("DOMAINS", "app1.com:app1"), ("SERVICES", SERVICES)])
        .args(["check", "--format", "json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["routes"][0]["domain"], "app1.com");
    assert_eq!(report["routes"][0]["servers"][0]["address"], "app1:8080");
    assert_eq!(report["placeholders"][0], "app1.com");
    assert_eq!(report["errors"].as_array().unwrap().len(), 0);
}

#[test]
fn usage_errors_exit_2() {
    cmd(&[]).arg("--no-such-flag").assert().code(2);
    dry_run(&[("HTTP_PORT", "0")]).code(2);
    for (var, flag) in [("LOCAL", "--local"), ("NO_DOCKER", "--no-docker")] {
        dry_run(&[(var, "maybe")]).code(2).stderr(contains(format!(
            "invalid value 'maybe' for '{flag} [<{var}>]': {var} (or {flag}) must be true or false (also yes/no, on/off, 1/0)"
        )));
    }
    for value in ["true", "YES", "on", "1", "false", "no", "Off", "0"] {
        dry_run(&[("DOMAINS", "ok.com"), ("LOCAL", value)]).success();
    }
}

#[test]
fn a_bad_public_ip_detect_is_a_usage_error_naming_the_variable_and_the_allowed_forms() {
    // (value, the entry named, why)
    for (value, entry, why) in [
        ("dns:myip.opendns.com", "dns:myip.opendns.com", "names no @SERVER"),
        (
            "dns:myip.opendns.com@resolver1.opendns.com",
            "dns:myip.opendns.com@resolver1.opendns.com",
            "has no ip or ip:port after @",
        ),
        ("interfaces,stun", "stun", "is none of these"),
        ("interfaces,off", "off", "must stand alone"),
    ] {
        dry_run(&[("DOMAINS", "a.com"), ("PUBLIC_IP_DETECT", value)]).code(2).stderr(contains(format!(
            "PUBLIC_IP_DETECT must be off or a comma-separated list of interfaces, dns (OpenDNS), \
                 dns:NAME@SERVER (SERVER ip or ip:port, e.g. dns:myip.opendns.com@208.67.222.222) and http(s)://URL; \
                 {entry:?} {why}"
        )));
    }
    for good in ["off", "interfaces", "dns", "dns:myip.opendns.com@127.0.0.1:8053,https://ip.example/"] {
        dry_run(&[("DOMAINS", "a.com"), ("PUBLIC_IP_DETECT", good)]).success();
    }
}

#[test]
fn template_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("custom.j2");
    std::fs::write(&template, "# custom\n{% for site in sites %}\nserver_name {{ site.nope }};\n{% endfor %}\n")
        .unwrap();
    cmd(&[("DOMAINS", "a.com")])
        .arg("--dry-run")
        .env("NGINX_TEMPLATE", &template)
        .assert()
        .code(1)
        .stderr(contains(format!("template {}, line 3", template.display())));
}

#[test]
fn a_setting_an_older_template_cannot_render_leaves_out_its_domain_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A template written before `max-body` (and before the policy's `directives`): it places
    // the policy's fields one by one and never reads `max_body`.
    let block = "{{ loc.policy.directives }}";
    assert!(smart_proxy::render::BUILTIN_TEMPLATE.contains(block));
    let fields = "        {{ m }}_send_timeout {{ loc.policy.timeout }};\n        {{ m }}_read_timeout {{ loc.policy.timeout }};";
    let old = smart_proxy::render::BUILTIN_TEMPLATE.replace(block, fields);
    let template = dir.path().join("old.j2");
    std::fs::write(&template, &old).unwrap();
    let file = dir.path().join("routes.json");
    let json = r#"{"domains":[{"name":"big.com","service":"app","max-body":"10g"},{"name":"small.com","service":"app"}],
        "services":[{"name":"app","host":"10.0.0.5","port":80}]}"#;
    std::fs::write(&file, json).unwrap();
    let out = cmd(&[("LOCAL", "true")])
        .arg("--dry-run")
        .arg("--config-file")
        .arg(&file)
        .env("NGINX_TEMPLATE", &template)
        .assert()
        .code(1)
        .stderr(contains(format!(
            "error: file {}, domains[0]: max-body is set, but the template {} never uses `max_body` to render it, so big.com is left out",
            file.display(),
            template.display()
        )))
        .get_output()
        .stdout
        .clone();
    let config = String::from_utf8(out).unwrap();
    assert!(config.contains("server_name small.com;") && !config.contains("big.com"), "{config}");
    // The built-in template renders it.
    cmd(&[("LOCAL", "true")])
        .arg("--dry-run")
        .arg("--config-file")
        .arg(&file)
        .assert()
        .success()
        .stdout(contains("client_max_body_size 10g;"));
}

#[test]
fn unsafe_settings_are_refused() {
    dry_run(&[("DOMAINS", "a.com"), ("CERTS_DIR", "/etc/le;ssl")])
        .code(1)
        .stderr(contains(r#"CERTS_DIR "/etc/le;ssl" is not allowed"#));
}

/// Settings are checked once, before anything runs: a certificate setting that cannot work stops
/// the dry run, `check` and the agent alike (the agent refuses to start with it), and the
/// message names the settings. `health` needs only STATUS_ADDR and is not held up by them.
#[test]
fn certificate_settings_are_checked_before_anything_runs() {
    let half_eab = [("DOMAINS", "a.com"), ("ACME", "on"), ("ACME_EAB_KID", "kid")];
    for args in [&["--dry-run"][..], &["check"]] {
        cmd(&half_eab)
            .args(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(contains("set both ACME_EAB_KID and ACME_EAB_HMAC_KEY"));
    }
    cmd(&[("DOMAINS", "a.com"), ("ACME", "on"), ("CLOUDFLARE_API_TOKEN_FILE", "/nonexistent/token")])
        .arg("check")
        .assert()
        .code(1)
        .stderr(contains("CLOUDFLARE_API_TOKEN_FILE"));
    cmd(&[("ACME", "on"), ("ACME_EAB_KID", "kid"), ("STATUS_ADDR", "off")])
        .arg("health")
        .assert()
        .code(1)
        .stdout(contains("unhealthy"));
}

#[test]
fn every_setting_is_documented_in_the_readme() {
    use clap::CommandFactory;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented: std::collections::BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name))
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .collect();
    let command = smart_proxy::cli::Cli::command();
    let in_code: std::collections::BTreeSet<String> =
        command.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    assert!(in_code.len() >= 20 && documented.len() >= 20, "found {in_code:?} in code, {documented:?} in the README");
    let undocumented: Vec<&String> = in_code.iter().filter(|e| !documented.contains(e.as_str())).collect();
    assert!(undocumented.is_empty(), "settings missing from the README's settings table: {undocumented:?}");
    let stale: Vec<&&str> = documented
        .iter()
        .filter(|d| !in_code.contains(**d) && !["DOCKER_HOST", "CERTBOT_EMAIL"].contains(*d))
        .collect();
    assert!(stale.is_empty(), "README documents settings the code does not have: {stale:?}");
}

#[test]
fn certs_list_shows_each_tls_domain() {
    use smart_proxy::certs::{
        placeholder,
        store::{CertStore, DomainState},
    };
    use smart_proxy::routes::DomainName;
    let certs = tempfile::tempdir().unwrap();
    let d = |s: &str| DomainName::parse(s).unwrap();
    placeholder::write(certs.path(), &d("a.com")).unwrap();
    let failing = DomainState {
        failures: 2,
        last_error: Some("CA said no".into()),
        next_try: Some(4102444800),
        last_attempt: None,
    };
    CertStore::new(certs.path()).save_state(&d("c.com"), &failing).unwrap();
    let dir = certs.path().display().to_string();
    cmd(&[("DOMAINS", "a.com,b.com,c.com"), ("CERTS_DIR", &dir)])
        .args(["certs", "list"])
        .assert()
        .success()
        .stdout(contains("DOMAIN").and(contains("DAYS LEFT")))
        .stdout(
            predicates::str::is_match(
                r"a\.com\s+CN=a\.com, O=nginx-smart-proxy placeholder\s+\S+\s+[67]\s+placeholder",
            )
            .unwrap(),
        )
        .stdout(predicates::str::is_match(r"b\.com\s+-\s+-\s+-\s+missing").unwrap())
        .stdout(contains("failing: CA said no (next try 2100-01-01T00:00:00Z)"));
    let output =
        cmd(&[("DOMAINS", "a.com"), ("CERTS_DIR", &dir)]).args(["certs", "list", "--format", "json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[0]["status"], "placeholder");
    assert!(!certs.path().join("smart-proxy/locks").exists(), "certs list writes nothing");
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    // Docker cannot be reached, so the dry run logs a warning.
    let env = [("DOMAINS", "ok.com"), ("NO_DOCKER", "false"), ("DOCKER_HOST", "unix:///nonexistent/docker.sock")];
    let piped = cmd(&env).arg("--dry-run").output().unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("WARN") && stderr.contains("container labels were not read"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colour codes in a piped log: {stderr:?}");
    // script(1) runs the command on a pseudo-terminal, as a person at a shell would.
    let binary = assert_cmd::cargo::cargo_bin("nginx-smart-proxy");
    for (no_color, coloured) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let mut script = std::process::Command::new("script");
        script.env_clear().env("NGINX_VERSION", "1.22.1").env("RESOLVER", "127.0.0.11").env("CERTS_DIR", "/none");
        script.envs(env).args(["-qec"]).arg(format!("{} --dry-run", binary.display())).arg("/dev/null");
        if let Some(value) = no_color {
            script.env("NO_COLOR", value);
        }
        let out = script.output().expect("script(1) from bsdutils");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("container labels were not read"), "NO_COLOR={no_color:?}: {text}");
        assert_eq!(text.contains("\x1b["), coloured, "NO_COLOR={no_color:?}: {text:?}");
    }
}

/// The `cargo run --release -- ...` commands a user copies from the README's "Without Docker"
/// block and from `examples/seed.env`, run as written from the repository's root, with the binary
/// this test run built in place of `cargo run --release --` (a second cargo inside `cargo test`
/// would wait on the build lock).
#[test]
fn readme_and_example_commands_work_from_a_clone() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let block = readme.split("Without Docker, render the config").nth(1).expect("README's no-Docker block");
    let block = block.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a ```sh block");
    let seed = std::fs::read_to_string(format!("{root}/examples/seed.env")).unwrap();
    let try_line = seed
        .lines()
        .skip_while(|l| !l.contains("Try it from a clone"))
        .nth(1)
        .expect("seed.env says how to try it")
        .trim_start_matches('#')
        .trim();
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).chain([try_line]).collect();
    assert_eq!(commands.len(), 3, "{commands:#?}");
    let binary = env!("CARGO_BIN_EXE_nginx-smart-proxy");
    for command in commands {
        assert!(command.contains("cargo run --release -- "), "{command}");
        let command = command.replace("cargo run --release --", binary);
        let out = std::process::Command::new("bash")
            .args(["-c", &command])
            .current_dir(root)
            .env("NGINX_VERSION", "1.22.1")
            .env("CERTS_DIR", "/nonexistent-certs")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("app1"), "{command} printed no route of app1:\n{stdout}");
    }
}

/// `--dry-run` (and `check`, from the same table) shows what the agent would do with a users-file
/// it cannot read: the route left out with the reason, the others served (an error of a file
/// route: exit 1).
#[test]
fn a_missing_users_file_is_reported_by_dry_run() {
    let json = r#"{"domains":[{"name":"team.com","service":"app","auth":"basic","auth.users-file":"/nonexistent/htpasswd"},
                              {"name":"open.com","service":"app"}],
                   "services":[{"name":"app","host":"10.0.0.5","port":80}]}"#;
    let (file, assert) = dry_run_file(json);
    assert
        .code(1)
        .stdout(contains("server_name open.com;").and(contains("team.com").not()))
        .stderr(contains(format!(
            "error: file {file}, domains[0]: auth.users-file /nonexistent/htpasswd: cannot read it: No such file or directory"
        )))
        .stderr(contains("team.com is left out"));
}
