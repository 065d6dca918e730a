//! HTTP to the CA: instant-acme over hyper-rustls (ring), recording the status and Retry-After
//! of the CA's last response for the error that follows it.

use super::*;

/// The outcome of the last HTTP exchange with the CA made by the current task.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastResponse {
    pub(super) status: u16,
    pub(super) retry_at: Option<SystemTime>,
}

tokio::task_local! {
    static LAST_RESPONSE: Cell<Option<LastResponse>>;
}

pub(super) type HyperClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    BodyWrapper<Bytes>,
>;

pub(super) struct RecordingClient(HyperClient);

impl HttpClient for RecordingClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = HttpClient::request(&self.0, req);
        Box::pin(async move {
            let result = match tokio::time::timeout(REQUEST_TIMEOUT, response).await {
                Ok(result) => result,
                Err(_) => Err(instant_acme::Error::Other(
                    format!("the ACME CA did not answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
            };
            record(&result);
            result
        })
    }
}

/// Remembers the status and Retry-After of `result` for the current task's [`with_capture`]
/// scope; a no-op outside one.
pub(super) fn record(result: &Result<BytesResponse, instant_acme::Error>) {
    let last = result
        .as_ref()
        .ok()
        .map(|rsp| LastResponse { status: rsp.parts.status.as_u16(), retry_at: parse_retry_after(&rsp.parts.headers) });
    let _ = LAST_RESPONSE.try_with(|cell| cell.set(last));
}

pub(super) fn parse_retry_after(headers: &http::HeaderMap) -> Option<SystemTime> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(SystemTime::now() + Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// Runs `fut` with the last-response capture that [`ca_error`] reads.
pub(super) async fn with_capture<T>(fut: impl Future<Output = T>) -> T {
    LAST_RESPONSE.scope(Cell::new(None), fut).await
}

pub(super) fn ca_error(step: impl Into<String>, source: instant_acme::Error) -> AcmeError {
    let last = LAST_RESPONSE.try_with(|cell| cell.get()).ok().flatten().filter(|last| last.status >= 400);
    let timeout_hint = match &source {
        instant_acme::Error::Timeout(Some(next)) => {
            Some(SystemTime::now() + next.saturating_duration_since(Instant::now()))
        }
        _ => None,
    };
    AcmeError::Ca {
        step: step.into(),
        status: last.map(|l| l.status),
        retry_at: last.and_then(|l| l.retry_at).or(timeout_hint),
        source,
    }
}

pub(super) fn http_client(settings: &AcmeSettings) -> Result<Box<dyn HttpClient>, AcmeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &settings.ca_root {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let bad = |reason: String| AcmeError::CaRoot { path: path.clone(), reason };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("the file holds no PEM certificate".to_string()));
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_platform_verifier(provider)
            .map_err(|e| AcmeError::SystemRoots { reason: e.to_string() })?,
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    Ok(Box::new(RecordingClient(client)))
}

// --- Accounts
