//! `CLOUDFLARE_IPS_URL`: Cloudflare's edge ranges for `TRUSTED_PROXIES=cloudflare`, fetched at
//! start and then daily. An answer that fails or does not parse whole changes nothing: the last
//! good list (at first the one shipped in the binary) stays trusted.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::Trigger;
use crate::render::edge::parse_ip_list;
use crate::routes::Cidr;

/// How often the list is fetched again, and how soon after a failure.
const REFRESH: Duration = Duration::from_secs(24 * 3600);
const RETRY: Duration = Duration::from_secs(3600);
/// The most an answer may hold (Cloudflare's is under 1 KB).
const MAX_BODY: usize = 1 << 20;

/// Fetches the list now and every [`REFRESH`], sending each good one as
/// [`Trigger::CloudflareIps`].
pub(super) fn spawn(url: reqwest::Url, tx: mpsc::Sender<Trigger>) {
    tokio::spawn(async move {
        let client = match client() {
            Ok(client) => client,
            Err(e) => return warn!("CLOUDFLARE_IPS_URL: {e}; keeping the shipped list"),
        };
        loop {
            let wait = match fetch(&client, &url).await {
                Ok(ranges) => {
                    if tx.send(Trigger::CloudflareIps(ranges)).await.is_err() {
                        return;
                    }
                    REFRESH
                }
                Err(e) => {
                    warn!(
                        "Cloudflare's IP ranges from {url}: {e}; keeping the last good list, trying again in an hour"
                    );
                    RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

fn client() -> Result<reqwest::Client, String> {
    let tls = crate::certs::cloudflare::tls_config().map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("nginx-smart-proxy/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<Cidr>, String> {
    let response = client.get(url.clone()).send().await.map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("the answer is {}", response.status()));
    }
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url().to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(format!("the answer is larger than {MAX_BODY} bytes"));
        }
    }
    parse_ip_list(&String::from_utf8_lossy(&body))
}
