//! The HTTP client webhooks are sent with: hyper's pooled client over rustls (ring provider,
//! the system's root certificates), HTTP/1.1, one POST per attempt bounded by a timeout. It
//! knows nothing of events or signatures.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::{header, HeaderValue, Method, Request, Uri};
use hyper_rustls::ConfigBuilderExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// Why an attempt got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no answer within the timeout")]
    Timeout,
    /// Connection refused, DNS, TLS handshake, reset: the detail is the error's kind only.
    #[error("request failed: {0}")]
    Failed(String),
}

impl SendError {
    /// Label for the deliveries metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SendError::Timeout => "timeout",
            SendError::Failed(_) => "unreachable",
        }
    }
}

/// An HTTP answer: what delivery needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
}

/// A pooled HTTPS-or-HTTP client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// Builds the client. Without usable system root certificates `https://` endpoints fail
    /// their handshakes (reported by each attempt) while `http://` ones still work.
    pub fn new(timeout: Duration) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .ok()
            .and_then(|b| b.with_native_roots().ok())
            .map(|b| b.with_no_client_auth());
        let tls = tls.unwrap_or_else(|| {
            tracing::warn!("no system root certificates found: https webhook endpoints will fail");
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                // The ring provider supports the default versions.
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
        });
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Client { inner, timeout }
    }

    /// POSTs `body` as JSON with `headers` and returns the status, within the timeout (which
    /// covers connecting, sending and the response head).
    pub async fn post(
        &self,
        url: &Uri,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, SendError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("switchboard-webhooks/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            let Ok(value) = HeaderValue::from_str(value) else {
                return Err(SendError::Failed("invalid header value".into()));
            };
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| SendError::Failed("invalid request".into()))?;
        let response = tokio::time::timeout(self.timeout, self.inner.request(request))
            .await
            .map_err(|_| SendError::Timeout)?
            .map_err(|e| SendError::Failed(describe(&e)))?;
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // The body is not read: dropping the response closes or recycles the connection.
        Ok(Answer {
            status: response.status().as_u16(),
            retry_after,
        })
    }
}

/// A short description of a client error without URLs (they may carry tokens).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        // The innermost source says refused / DNS / TLS without the address.
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
        let mut last = "connect failed".to_owned();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                last = format!("connect failed: {}", io.kind());
            }
            source = s.source();
        }
        last
    } else {
        "connection failed".to_owned()
    }
}
