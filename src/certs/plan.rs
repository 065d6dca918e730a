//! Which domains need a certificate order now, and with which challenge. Pure: the caller reads
//! the store and passes what it found.

use serde::Serialize;
use time::OffsetDateTime;

use super::store::{AriState, CertInfo, DomainState};
use crate::routes::DomainName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Challenge {
    Dns01,
    Http01,
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Challenge::Dns01 => "DNS-01",
            Challenge::Http01 => "HTTP-01",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Reason {
    Missing,
    Placeholder,
    Expiring {
        days_left: i64,
    },
    /// The CA's renewal window (ACME Renewal Information) says to renew now.
    RenewalWindow {
        renew_at: i64,
    },
    Forced,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Missing => f.write_str("no certificate"),
            Reason::Placeholder => f.write_str("placeholder certificate"),
            Reason::Expiring { days_left } => write!(f, "{days_left} days left"),
            Reason::RenewalWindow { .. } => f.write_str("the CA's renewal window (ARI) says to renew"),
            Reason::Forced => f.write_str("renewal forced"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub domain: DomainName,
    pub reason: Reason,
    pub challenge: Challenge,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Skip {
    /// A recent failure: the next attempt waits until `next_try` (unix seconds).
    Backoff { next_try: i64, last_error: String },
    /// A wildcard can only be validated with DNS-01, and no DNS provider is configured.
    WildcardNeedsDns01,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Backoff { next_try, last_error } => {
                let at = time::OffsetDateTime::from_unix_timestamp(*next_try)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_default();
                write!(f, "waiting after a failure until {at} (last error: {last_error})")
            }
            Skip::WildcardNeedsDns01 => f.write_str("a wildcard needs DNS-01; set CLOUDFLARE_API_TOKEN"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub orders: Vec<Order>,
    pub skipped: Vec<(DomainName, Skip)>,
}

#[derive(Debug, Clone, Copy)]
pub struct PlanSettings {
    /// Renew when this many days or fewer are left.
    pub renew_days: i64,
    /// A DNS provider (Cloudflare) is configured: DNS-01 for every domain; else HTTP-01.
    pub dns01: bool,
}

/// What the store knows about one domain: its certificate, its renewal state, and the CA's
/// renewal information (ARI) cached for that very certificate.
pub type Known = (Option<CertInfo>, DomainState, Option<AriState>);

/// Plans orders for `domains` (the TLS domains of the route table). `forced` domains are ordered
/// whatever their state, backoff included. A certificate is renewed when `renew_days` or fewer
/// are left, or once the point chosen in the CA's renewal window (ARI) for this very certificate
/// has passed.
pub fn plan(
    domains: &[DomainName],
    lookup: impl Fn(&DomainName) -> Known,
    forced: &[DomainName],
    settings: PlanSettings,
    now: OffsetDateTime,
) -> Plan {
    let mut plan = Plan::default();
    for domain in domains {
        let (info, state, ari) = lookup(domain);
        let force = forced.contains(domain);
        let window = ari
            .as_ref()
            .and_then(|a| a.window.as_ref())
            .filter(|w| w.renew_at <= now.unix_timestamp())
            .map(|w| w.renew_at);
        let reason = match &info {
            _ if force => Reason::Forced,
            None => Reason::Missing,
            Some(i) if i.placeholder => Reason::Placeholder,
            Some(i) if i.days_left(now) <= settings.renew_days => Reason::Expiring { days_left: i.days_left(now) },
            Some(_) => match window {
                Some(renew_at) => Reason::RenewalWindow { renew_at },
                None => continue,
            },
        };
        if domain.is_wildcard() && !settings.dns01 {
            plan.skipped.push((domain.clone(), Skip::WildcardNeedsDns01));
            continue;
        }
        if let (Some(next_try), false) = (state.next_try, force) {
            if next_try > now.unix_timestamp() {
                let last_error = state.last_error.clone().unwrap_or_default();
                plan.skipped.push((domain.clone(), Skip::Backoff { next_try, last_error }));
                continue;
            }
        }
        let challenge = if settings.dns01 { Challenge::Dns01 } else { Challenge::Http01 };
        plan.orders.push(Order { domain: domain.clone(), reason, challenge });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn cert(days: i64, placeholder: bool, now: OffsetDateTime) -> CertInfo {
        CertInfo { issuer: "CN=test".into(), not_after: now + time::Duration::days(days), placeholder }
    }

    #[test]
    fn orders_what_is_missing_placeholder_or_expiring_and_respects_backoff() {
        let now = OffsetDateTime::now_utc();
        let domains = [
            d("missing.com"),
            d("placeholder.com"),
            d("expiring.com"),
            d("fresh.com"),
            d("failing.com"),
            d("*.wild.com"),
        ];
        let lookup = |domain: &DomainName| match domain.as_str() {
            "placeholder.com" => (Some(cert(7, true, now)), DomainState::default(), None),
            "expiring.com" => (Some(cert(10, false, now)), DomainState::default(), None),
            "fresh.com" => (Some(cert(80, false, now)), DomainState::default(), None),
            "failing.com" => (
                None,
                DomainState {
                    failures: 3,
                    last_error: Some("CA down".into()),
                    next_try: Some(now.unix_timestamp() + 60),
                    last_attempt: None,
                },
                None,
            ),
            _ => (None, DomainState::default(), None),
        };
        let settings = PlanSettings { renew_days: 30, dns01: false };
        let p = plan(&domains, lookup, &[], settings, now);
        let ordered: Vec<(&str, &Reason)> = p.orders.iter().map(|o| (o.domain.as_str(), &o.reason)).collect();
        assert_eq!(
            ordered,
            [
                ("missing.com", &Reason::Missing),
                ("placeholder.com", &Reason::Placeholder),
                ("expiring.com", &Reason::Expiring { days_left: 10 })
            ]
        );
        assert!(p.orders.iter().all(|o| o.challenge == Challenge::Http01));
        assert_eq!(p.skipped.len(), 2);
        assert!(matches!(p.skipped[0].1, Skip::Backoff { .. }));
        assert_eq!(p.skipped[1], (d("*.wild.com"), Skip::WildcardNeedsDns01));

        let p = plan(
            &domains,
            lookup,
            &[d("fresh.com"), d("failing.com")],
            PlanSettings { renew_days: 30, dns01: true },
            now,
        );
        assert!(p.orders.iter().any(|o| o.domain.as_str() == "fresh.com" && o.reason == Reason::Forced));
        assert!(p.orders.iter().any(|o| o.domain.as_str() == "failing.com"), "forcing overrides backoff");
        assert!(p.orders.iter().any(|o| o.domain.as_str() == "*.wild.com" && o.challenge == Challenge::Dns01));
    }

    /// `www`: the other name of the pair is a TLS domain of the table, so it is planned (and
    /// ordered) like the canonical one, each under its own name.
    #[test]
    fn the_other_name_of_a_www_pair_is_ordered_too() {
        use crate::routes::policy::Www;
        use crate::routes::{Origin, PathPrefix, Policy, RouteDef, RouteTable, SourceOutput, TlsMode};
        let route = |domain: &str, www: Option<Www>| RouteDef {
            domain: d(domain),
            path: PathPrefix::root(),
            service: None,
            allow: vec![],
            tls: TlsMode::Auto,
            health: None,
            hsts: None,
            redirect: None,
            www,
            policy: Policy::default(),
            origin: Origin::Container { name: domain.into(), label: None },
        };
        let routes =
            vec![route("shop.com", Some(Www::ToApex)), route("blog.com", Some(Www::ToWww)), route("plain.com", None)];
        let table = RouteTable::build(vec![SourceOutput { routes, ..Default::default() }]);
        let domains = table.tls_domains();
        let names: Vec<&str> = domains.iter().map(DomainName::as_str).collect();
        assert_eq!(names, ["blog.com", "plain.com", "shop.com", "www.blog.com", "www.shop.com"]);
        let now = OffsetDateTime::now_utc();
        let p = plan(
            &domains,
            |_| (None, DomainState::default(), None),
            &[],
            PlanSettings { renew_days: 30, dns01: false },
            now,
        );
        let ordered: Vec<&str> = p.orders.iter().map(|o| o.domain.as_str()).collect();
        assert_eq!(ordered, names, "each name its own certificate");
    }

    #[test]
    fn the_cas_renewal_window_renews_a_fresh_certificate_once_its_point_passed() {
        use crate::certs::store::RenewalWindow;
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let ari = |cert_id: &str, renew_at: i64| AriState {
            cert_id: cert_id.into(),
            next_fetch: t + 3600,
            window: Some(RenewalWindow { start: t - 100, end: t + 100, renew_at, explanation_url: None }),
        };
        let domains = [d("due.com"), d("later.com"), d("no-window.com"), d("failed.com")];
        let lookup = |domain: &DomainName| {
            let fresh = Some(cert(60, false, now));
            match domain.as_str() {
                "due.com" => (fresh, DomainState::default(), Some(ari("aki.serial", t - 1))),
                "later.com" => (fresh, DomainState::default(), Some(ari("aki.serial", t + 50))),
                "no-window.com" => (
                    fresh,
                    DomainState::default(),
                    Some(AriState { cert_id: "aki.serial".into(), next_fetch: t + 60, window: None }),
                ),
                _ => (
                    fresh,
                    DomainState { failures: 1, next_try: Some(t + 60), ..Default::default() },
                    Some(ari("aki.serial", t - 1)),
                ),
            }
        };
        let p = plan(&domains, lookup, &[], PlanSettings { renew_days: 30, dns01: false }, now);
        assert_eq!(p.orders.len(), 1, "{p:?}");
        assert_eq!(p.orders[0].domain, d("due.com"));
        assert_eq!(p.orders[0].reason, Reason::RenewalWindow { renew_at: t - 1 });
        assert_eq!(p.orders[0].reason.to_string(), "the CA's renewal window (ARI) says to renew");
        assert!(matches!(&p.skipped[..], [(name, Skip::Backoff { .. })] if name.as_str() == "failed.com"), "{p:?}");
    }
}
