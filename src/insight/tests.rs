use super::*;

/// A datagram as nginx's syslog sends it.
fn line(domain: &str, status: u16, ms: u32, upstream: (&str, &str, &str)) -> Vec<u8> {
    let (ua, us, ut) = upstream;
    format!(
        r#"<190>Dec  5 22:00:00 smartproxy: {{"d":"{domain}","s":{status},"b":100,"t":{}.{:03},"ua":"{ua}","us":"{us}","ut":"{ut}"}}"#,
        ms / 1000,
        ms % 1000
    )
    .into_bytes()
}

fn ok(domain: &str, ms: u32) -> Vec<u8> {
    line(domain, 200, ms, ("10.0.0.1:80", "200", "0.001"))
}

fn bad_gateway(domain: &str) -> Vec<u8> {
    line(domain, 502, 1, ("10.0.0.1:80", "502", "0.001"))
}

/// Starts at a realistic unix time, on a minute boundary.
const T0: u64 = 1_764_972_000_000;

fn insight(domains: &[&str]) -> Insight {
    let mut i = Insight::new();
    i.set_domains(domains);
    i
}

fn domain<'a>(s: &'a Snapshot, name: &str) -> &'a DomainSnapshot {
    s.domains.iter().find(|d| d.domain == name).unwrap()
}

#[test]
fn dropped_lines_are_counted_by_reason() {
    let mut i = insight(&["a.com"]);
    i.ingest(&ok("a.com", 5), T0);
    i.ingest(&ok("b.com", 5), T0);
    i.ingest(&ok("", 5), T0);
    i.ingest(b"garbage", T0);
    i.ingest(&[b'{'; MAX_LINE + 1], T0);
    assert_eq!(i.dropped(), Dropped { malformed: 1, oversized: 1, unrouted: 2 });
    let s = i.snapshot(T0 + 60_000);
    assert_eq!(domain(&s, "a.com").total.requests, 1);
    assert_eq!(s.domains.len(), 1);
}

#[test]
fn a_domain_no_longer_routed_is_forgotten() {
    let mut i = insight(&["a.com", "b.com"]);
    i.ingest(&ok("a.com", 5), T0);
    i.ingest(&ok("b.com", 5), T0);
    i.set_domains(["b.com", "c.com"]);
    let s = i.snapshot(T0);
    assert_eq!(s.domains.iter().map(|d| d.domain.as_str()).collect::<Vec<_>>(), ["b.com", "c.com"]);
    assert_eq!(domain(&s, "b.com").total.requests, 1, "kept");
    i.set_domains(["a.com"]);
    assert_eq!(domain(&i.snapshot(T0), "a.com").total.requests, 0, "back, from zero");
}

#[test]
fn windows_count_completed_slots() {
    let mut i = insight(&["a.com"]);
    // 10 requests per second for 20 minutes, 1 in 10 a 5xx, request times 10..=100 ms.
    for s in 0..1200u64 {
        for k in 0..10u32 {
            let status = if k == 0 { 503 } else { 200 };
            i.ingest(&line("a.com", status, 10 * (k + 1), ("10.0.0.1:80", "200", "0.002")), T0 + s * 1000);
        }
    }
    let now = T0 + 1200 * 1000;
    let s = i.snapshot(now);
    let d = domain(&s, "a.com");
    assert_eq!((d.last_minute.seconds, d.last_minute.requests), (60, 600));
    assert_eq!(d.last_minute.requests_per_second, 10.0);
    assert_eq!(d.last_minute.by_class.c5xx, 60);
    assert!((d.last_minute.error_ratio - 0.1).abs() < 1e-9);
    assert_eq!(d.last_minute.bytes, 60_000);
    assert_eq!((d.last_15_minutes.seconds, d.last_15_minutes.requests), (900, 9000));
    assert_eq!(d.total.requests, 12_000);
    let p = d.last_minute.request_time_ms;
    let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() <= want * 0.123;
    assert!(near(p.p50, 50.0) && near(p.p95, 100.0) && near(p.p99, 100.0), "{p:?}");
    assert!(near(d.last_minute.upstream_time_ms.p50, 2.0));
    let p = d.last_15_minutes.request_time_ms;
    assert!(near(p.p50, 50.0) && near(p.p95, 100.0) && near(p.p99, 100.0), "{p:?}");
    let p = d.last_15_minutes.upstream_time_ms;
    assert!(near(p.p50, 2.0) && near(p.p95, 2.0) && near(p.p99, 2.0), "{p:?}");
    assert_eq!(d.last_15_minutes.bytes, 900_000);
    // The sparkline: 60 minutes, the first 40 without traffic.
    assert_eq!(d.requests_per_minute.len(), 60);
    assert_eq!(d.requests_per_minute[..40], [0; 40]);
    assert_eq!(d.requests_per_minute[40..], [600; 20]);
    // Half a minute later, nothing new: the minute window slides by 5 s slots.
    let d = domain(&i.snapshot(now + 30_000), "a.com").clone();
    assert_eq!(d.last_minute.requests, 300);
    assert_eq!(d.last_15_minutes.requests, 9000, "the current minute is not complete");
}

#[test]
fn upstream_servers_errors_and_timeouts() {
    let mut i = insight(&["a.com"]);
    let retried = ("10.0.0.1:80, 10.0.0.2:80", "502, 200", "0.001, 0.002");
    i.ingest(&line("a.com", 200, 3, retried), T0);
    i.ingest(&line("a.com", 504, 3, ("10.0.0.2:80", "504", "60.000")), T0);
    i.ingest(&line("a.com", 200, 3, ("-", "-", "-")), T0);
    for k in 0..40 {
        i.ingest(&line("a.com", 200, 3, (&format!("10.1.0.{k}:80"), "200", "0.001")), T0);
    }
    let s = i.snapshot(T0 + 60_000);
    let d = domain(&s, "a.com");
    assert_eq!(d.upstreams.len(), MAX_SERVERS);
    let server = |addr: &str| d.upstreams.iter().find(|u| u.server == addr).unwrap();
    let counts = |attempts, errors, timeouts| UpstreamCounts { attempts, errors, timeouts };
    assert_eq!(server("10.0.0.1:80").total, counts(1, 1, 0));
    assert_eq!(server("10.0.0.2:80").last_minute, counts(2, 1, 1));
    assert_eq!(server(OTHER_SERVERS).total, counts(27, 0, 0), "40 servers: 13 named, the rest together");
}

#[test]
fn snapshot_json_field_names() {
    let mut i = insight(&["a.com"]);
    i.ingest(&ok("a.com", 5), T0);
    let json = serde_json::to_value(i.snapshot(T0 + 5_000)).unwrap();
    let d = &json["domains"][0];
    assert_eq!(d["domain"], "a.com");
    assert_eq!(d["last_minute"]["by_class"]["2xx"], 1);
    assert!(d["last_minute"]["request_time_ms"]["p95"].is_number());
    assert!(d["last_15_minutes"]["upstream_time_ms"]["p50"].is_null(), "no full minute yet");
    assert_eq!(d["upstreams"][0]["server"], "10.0.0.1:80");
    assert_eq!(json["dropped"]["unrouted"], 0);
    assert!(d["anomalies"].as_array().unwrap().is_empty());
}

/// Ten minutes of 10 requests per second, ticking every 5 s like the agent.
fn steady(
    i: &mut Insight,
    domain: &str,
    from: u64,
    seconds: u64,
    mut line: impl FnMut(u64) -> Vec<u8>,
) -> Vec<AnomalyEvent> {
    let mut events = Vec::new();
    for s in 0..seconds {
        let now = from + s * 1000;
        for _ in 0..10 {
            i.ingest(&line(now), now);
        }
        if s % 5 == 4 {
            events.extend(i.tick(now + 1000));
        }
    }
    events.iter().for_each(|e| assert_eq!(e.domain, domain));
    events
}

#[test]
fn an_upstream_failing_raises_error_ratio_within_a_minute_and_recovery_clears_it() {
    let mut i = insight(&["a.com"]);
    let calm = steady(&mut i, "a.com", T0, 600, |_| ok("a.com", 20));
    assert!(calm.is_empty(), "{calm:?}");
    let failing_from = T0 + 600_000;
    let raised = steady(&mut i, "a.com", failing_from, 120, |_| bad_gateway("a.com"));
    assert_eq!(raised.len(), 1, "{raised:?}");
    let e = &raised[0];
    assert_eq!((e.kind, e.started), (AnomalyKind::ErrorRatio, true));
    assert!(e.at_ms - failing_from <= 15_000, "raised {} ms after", e.at_ms - failing_from);
    assert!(e.figures.observed >= 0.10 && e.figures.baseline == 0.0 && e.figures.requests >= 20, "{e:?}");
    let s = i.snapshot(failing_from + 120_000);
    let d = domain(&s, "a.com");
    assert_eq!(d.anomalies.len(), 1);
    assert_eq!(d.anomalies[0].raised, e.figures);
    assert_eq!(d.baseline.error_ratio.value, 0.0, "the baseline does not learn the failure");
    let mut text = String::new();
    i.encode(&mut text);
    assert!(text.contains("smart_proxy_http_anomaly{domain=\"a.com\",kind=\"error_ratio\"} 1"), "{text}");

    let recovered_from = failing_from + 120_000;
    let cleared = steady(&mut i, "a.com", recovered_from, 300, |_| ok("a.com", 20));
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!((cleared[0].kind, cleared[0].started), (AnomalyKind::ErrorRatio, false));
    let after = cleared[0].at_ms - recovered_from;
    assert!(after <= 65_000, "cleared {after} ms after recovery");
    assert_eq!(domain(&i.snapshot(recovered_from + 300_000), "a.com").baseline.error_ratio.value, 0.0);
}

#[test]
fn traffic_drop_and_return() {
    let mut i = insight(&["a.com"]);
    assert!(steady(&mut i, "a.com", T0, 900, |_| ok("a.com", 20)).is_empty());
    let quiet_from = T0 + 900_000;
    let mut events = Vec::new();
    for s in (0..180).step_by(5) {
        events.extend(i.tick(quiet_from + s * 1000));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].started), (AnomalyKind::TrafficDrop, true));
    assert!(events[0].at_ms - quiet_from <= 65_000 && events[0].at_ms - quiet_from >= 60_000);
    assert!((events[0].figures.baseline - 10.0).abs() < 0.5, "{events:?}");
    let back = steady(&mut i, "a.com", quiet_from + 180_000, 60, |_| ok("a.com", 20));
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(!back[0].started);
}

#[test]
fn a_quiet_domain_is_not_judged() {
    let mut i = insight(&["a.com"]);
    let mut events = Vec::new();
    // One request every 10 s for an hour, then an hour of 5xx at the same pace, then silence.
    for s in (0..7200u64).step_by(10) {
        let now = T0 + s * 1000;
        i.ingest(&if s < 3600 { ok("a.com", 20) } else { bad_gateway("a.com") }, now);
        events.extend(i.tick(now));
    }
    for s in (0..3600u64).step_by(5) {
        events.extend(i.tick(T0 + 7_200_000 + s * 1000));
    }
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn idle_slots_free_their_histograms() {
    let mut i = insight(&["a.com"]);
    for s in 0..900 {
        i.ingest(&ok("a.com", 20), T0 + s * 1000);
    }
    let busy = i.memory_bytes();
    i.tick(T0 + 2_000_000);
    let idle = i.memory_bytes();
    assert!(busy - idle >= 28 * 2 * BUCKETS, "{busy} then {idle}");
}

#[test]
fn a_busy_slot_widens_its_counts() {
    let mut h = Hists::new();
    for _ in 0..70_000 {
        h.add(REQUEST, 3);
    }
    h.add(UPSTREAM, 5);
    assert!(matches!(h, Hists::U32(_)));
    let (mut request, mut upstream) = ([0u64; BUCKETS], [0u64; BUCKETS]);
    h.add_to(REQUEST, &mut request);
    h.add_to(UPSTREAM, &mut upstream);
    assert_eq!((request[3], request.iter().sum::<u64>(), upstream[5]), (70_000, 70_000, 1));
    h.clear();
    assert!(matches!(h, Hists::U32(_)), "keeps its width");
    let mut sum = [0u64; BUCKETS];
    h.add_to(REQUEST, &mut sum);
    assert_eq!(sum, [0; BUCKETS]);
}

#[test]
fn time_going_back_does_not_overwrite_newer_slots() {
    let mut i = insight(&["a.com"]);
    i.ingest(&ok("a.com", 5), T0 + 120_000);
    i.ingest(&ok("a.com", 5), T0);
    let s = i.snapshot(T0 + 180_000);
    assert_eq!(domain(&s, "a.com").last_15_minutes.requests, 2);
}

#[test]
fn prometheus_families() {
    let mut i = insight(&["a.com", "quiet.com"]);
    i.ingest(&line("a.com", 200, 1, ("10.0.0.1:80", "200", "0.001")), T0);
    i.ingest(&line("a.com", 404, 3, ("10.0.0.1:80", "404", "0.001")), T0);
    i.ingest(&line("a.com", 502, 3000, ("10.0.0.1:80, x\\\"y", "502, 502", "0.001, 0.001")), T0);
    i.ingest(b"x", T0);
    let mut text = String::new();
    i.encode(&mut text);
    for name in prometheus::NAMES {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    let has = |series: &str| text.lines().any(|l| l == series);
    assert!(has("smart_proxy_http_requests_total{domain=\"a.com\",class=\"4xx\"} 1"), "{text}");
    assert!(has("smart_proxy_http_response_bytes_total{domain=\"a.com\"} 300"), "{text}");
    assert!(has("smart_proxy_http_request_duration_seconds_bucket{domain=\"a.com\",le=\"0.002\"} 1"), "{text}");
    assert!(has("smart_proxy_http_request_duration_seconds_bucket{domain=\"a.com\",le=\"0.008\"} 2"), "{text}");
    assert!(has("smart_proxy_http_request_duration_seconds_bucket{domain=\"a.com\",le=\"+Inf\"} 3"), "{text}");
    assert!(has("smart_proxy_http_request_duration_seconds_sum{domain=\"a.com\"} 3.004"), "{text}");
    // The last try's upstream time: 1 ms for each of the three.
    assert!(has("smart_proxy_http_upstream_duration_seconds_bucket{domain=\"a.com\",le=\"0.0005\"} 0"), "{text}");
    assert!(has("smart_proxy_http_upstream_duration_seconds_bucket{domain=\"a.com\",le=\"0.002\"} 3"), "{text}");
    assert!(has("smart_proxy_http_upstream_duration_seconds_count{domain=\"a.com\"} 3"), "{text}");
    assert!(has("smart_proxy_http_upstream_duration_seconds_sum{domain=\"a.com\"} 0.003"), "{text}");
    assert!(has("smart_proxy_http_upstream_errors_total{domain=\"a.com\",upstream=\"10.0.0.1:80\"} 1"), "{text}");
    assert!(has("smart_proxy_http_upstream_errors_total{domain=\"a.com\",upstream=\"x\\\\\\\"y\"} 1"), "{text}");
    assert!(has("smart_proxy_http_anomaly{domain=\"a.com\",kind=\"latency\"} 0"), "{text}");
    assert!(has("smart_proxy_http_log_lines_dropped_total{reason=\"malformed\"} 1"), "{text}");
    assert!(!text.contains("quiet.com"), "no series before a domain's first request");
}

#[test]
fn healing_is_fed_from_the_lines() {
    let mut i = insight(&["a.com"]);
    i.enable_healing(HealConfig::default());
    for s in 0..=60u64 {
        i.ingest(&line("a.com", 502, 1, ("10.0.0.9:80", "502", "0.001")), T0 + s * 1000);
    }
    let candidates = [Candidate { container: "app", server: "10.0.0.9:80", docker_healthy: None }];
    let restarts = i.healer_mut().unwrap().decide(&candidates, T0 + 60_000);
    assert_eq!(restarts.len(), 1);
    assert_eq!(restarts[0].container, "app");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        let valid = (prop_oneof![Just("a.com"), Just("b.com"), Just("c.com")], 100u16..600, 0u32..200_000, 0usize..4)
            .prop_map(|(d, s, ms, ups)| {
                let ua: Vec<String> = (0..ups).map(|k| format!("10.0.0.{k}:80")).collect();
                let us: Vec<String> =
                    (0..ups).map(|k| if k + 1 == ups { s.to_string() } else { "502".into() }).collect();
                line(d, s, ms, (&ua.join(", "), &us.join(", "), "0.001, 0.002"))
            });
        prop_oneof![
            4 => valid.clone(),
            1 => proptest::collection::vec(any::<u8>(), 0..300),
            2 => (valid, proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)).prop_map(
                |(mut line, edits)| {
                    for (at, byte) in edits {
                        let i = at.index(line.len());
                        line[i] = byte;
                    }
                    line
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever arrives, at whatever time (late, skewed, at the end of time), nothing panics
        /// and the figures add up.
        #[test]
        fn any_datagrams_at_any_times(
            lines in proptest::collection::vec((datagram(), prop_oneof![0u64..3_600_000, Just(u64::MAX / 2), Just(u64::MAX)]), 1..200),
        ) {
            let mut i = insight(&["a.com", "b.com"]);
            i.enable_healing(HealConfig::default());
            let mut ingested = 0u64;
            for (k, (datagram, offset)) in lines.iter().enumerate() {
                let now = T0.saturating_add(*offset);
                i.ingest(datagram, now);
                ingested += 1;
                if k % 7 == 0 {
                    i.tick(now);
                }
            }
            let now = T0.saturating_add(lines[lines.len() - 1].1);
            let s = i.snapshot(now);
            let d = s.dropped;
            let counted: u64 = s.domains.iter().map(|d| d.total.requests).sum();
            prop_assert_eq!(counted + d.malformed + d.oversized + d.unrouted, ingested);
            for d in &s.domains {
                prop_assert!(d.upstreams.len() <= MAX_SERVERS);
                prop_assert_eq!(d.requests_per_minute.len(), 60);
            }
            let mut text = String::new();
            i.encode(&mut text);
            let _ = i.tick(u64::MAX);
            let _ = serde_json::to_string(&i.snapshot(u64::MAX)).unwrap();
            let candidates = [Candidate { container: "x", server: "10.0.0.0:80", docker_healthy: None }];
            let _ = i.healer_mut().unwrap().decide(&candidates, u64::MAX);
        }
    }
}
