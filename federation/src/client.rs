//! Requests to other servers: found by server discovery, over TLS, signed with this server's
//! key (the X-Matrix `Authorization` header) when the endpoint asks for it, answered as ruma's
//! typed responses.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use ruma::{
    api::{
        auth_scheme::{AuthScheme, NoAuthentication},
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
    },
    signatures::Ed25519KeyPair,
    OwnedServerName, ServerName,
};
use weft_core::Core;

use crate::discovery::Resolver;

/// A request gives up after this long unless it says otherwise (`send_with_timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0} is this server")]
    ToSelf(OwnedServerName),
    #[error("federation is disabled on this server")]
    Disabled,
    #[error("cannot reach {server}: {message}")]
    Unreachable { server: OwnedServerName, message: String },
    #[error("{server} answered {status}: {errcode} {message}")]
    Remote {
        server: OwnedServerName,
        status: u16,
        errcode: String,
        message: String,
        /// The error's other fields (`room_version` with M_INCOMPATIBLE_ROOM_VERSION...).
        extra: serde_json::Map<String, serde_json::Value>,
    },
    #[error("{server} answered something unexpected: {message}")]
    BadResponse { server: OwnedServerName, message: String },
    #[error("cannot build the request: {0}")]
    Request(String),
    /// The answer was longer than the caller reads (media over the configured size).
    #[error("{server} answered more than {limit} bytes")]
    TooLarge { server: OwnedServerName, limit: usize },
}

impl FederationError {
    /// The Matrix error code another server answered with, if it answered one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            FederationError::Remote { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// The other fields of another server's error answer.
    pub fn extra(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        match self {
            FederationError::Remote { extra, .. } if !extra.is_empty() => Some(extra),
            _ => None,
        }
    }

    /// The HTTP status another server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            FederationError::Remote { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How an endpoint's authentication scheme is filled in for an outgoing request.
pub trait Signing: AuthScheme {
    fn input<'a>(origin: &ServerName, destination: &ServerName, key: &'a Ed25519KeyPair) -> Self::Input<'a>;
}

impl Signing for ServerSignatures {
    fn input<'a>(origin: &ServerName, destination: &ServerName, key: &'a Ed25519KeyPair) -> Self::Input<'a> {
        XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key)
    }
}

impl Signing for NoAuthentication {
    fn input<'a>(_: &ServerName, _: &ServerName, _: &'a Ed25519KeyPair) -> Self::Input<'a> {}
}

/// The outbound side of federation; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    http: reqwest::Client,
    resolver: Resolver,
    enabled: bool,
    /// The largest answer read unless the caller says otherwise (`max_response_size`): a
    /// send_join answer for a room of tens of thousands of members is tens of MiB.
    max_response: usize,
}

/// What the client needs from the configuration.
pub struct Settings<'a> {
    pub enabled: bool,
    /// Extra CA certificates trusted besides the public roots (`extra_ca_file`).
    pub extra_roots: &'a [reqwest::Certificate],
    /// Accept any certificate (tests only).
    pub insecure: bool,
    /// The largest answer read (`send_capped` aside).
    pub max_response: usize,
}

impl Client {
    pub fn new(core: Core, settings: Settings<'_>) -> Result<Client, FederationError> {
        let builder = || {
            let builder = settings
                .extra_roots
                .iter()
                .fold(reqwest::Client::builder(), |b, root| {
                    b.add_root_certificate(root.clone())
                })
                .danger_accept_invalid_certs(settings.insecure)
                .user_agent(concat!("Weft/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(90));
            builder
        };
        let build_error = |e: reqwest::Error| FederationError::Request(format!("HTTP client: {e}"));
        // `.well-known/matrix/server` is fetched with ordinary resolution; the federation
        // requests themselves connect where discovery said.
        let resolver = Resolver::new(builder().build().map_err(build_error)?);
        let http = builder().dns_resolver2(resolver.dns()).build().map_err(build_error)?;
        Ok(Client {
            inner: Arc::new(Inner {
                core,
                http,
                resolver,
                enabled: settings.enabled,
                max_response: settings.max_response,
            }),
        })
    }

    pub fn core(&self) -> &Core {
        &self.inner.core
    }

    /// Sends `request` to `destination` and reads its answer.
    pub async fn send<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: Signing,
    {
        self.send_with_timeout(destination, request, DEFAULT_TIMEOUT).await
    }

    pub async fn send_with_timeout<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: Signing,
    {
        self.send_capped(destination, request, timeout, self.inner.max_response)
            .await
    }

    /// `send_with_timeout`, reading at most `limit` bytes of the answer: a longer one is
    /// `TooLarge`, found out as it arrives (media, whose size is the caller's to limit).
    pub async fn send_capped<R>(
        &self,
        destination: &ServerName,
        request: R,
        timeout: Duration,
        limit: usize,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        R::Authentication: Signing,
    {
        let inner = &self.inner;
        self.check_destination(destination)?;
        let base = self.base_url(destination).await?;
        let auth = R::Authentication::input(&inner.core.server_name, destination, &inner.core.key.keypair);
        let request: http::Request<Vec<u8>> = request
            .try_into_http_request(&base, auth, ())
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let mut outgoing = inner
            .http
            .request(parts.method, &url)
            .headers(parts.headers)
            .timeout(timeout);
        if !body.is_empty() {
            outgoing = outgoing.body(body);
        }
        let (headers, bytes) = self.exchange(destination, outgoing, limit).await?;
        let mut http_response = http::Response::builder().status(http::StatusCode::OK);
        if let Some(h) = http_response.headers_mut() {
            *h = headers;
        }
        let http_response = http_response
            .body(&bytes[..])
            .map_err(|e| FederationError::Request(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(http_response).map_err(|e| FederationError::BadResponse {
            server: destination.to_owned(),
            message: e.to_string(),
        })
    }

    /// An unsigned `GET` of `path_and_query` on another server (endpoints ruma's server-side
    /// types do not cover, such as the legacy media download), at most `limit` bytes of it:
    /// the answer's headers and body.
    pub async fn get_unsigned(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<(http::HeaderMap, Vec<u8>), FederationError> {
        self.check_destination(destination)?;
        let base = self.base_url(destination).await?;
        let outgoing = self
            .inner
            .http
            .get(format!("{}{path_and_query}", base.trim_end_matches('/')))
            .timeout(timeout);
        self.exchange(destination, outgoing, limit).await
    }

    /// A `GET` of a URL another server named (a media download's `Location`), unsigned, at
    /// most `limit` bytes of it.
    pub async fn get_url(
        &self,
        server: &ServerName,
        url: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<(http::HeaderMap, Vec<u8>), FederationError> {
        self.check_destination(server)?;
        let outgoing = self.inner.http.get(url).timeout(timeout);
        self.exchange(server, outgoing, limit).await
    }

    fn check_destination(&self, destination: &ServerName) -> Result<(), FederationError> {
        if !self.inner.enabled {
            return Err(FederationError::Disabled);
        }
        if destination == self.inner.core.server_name {
            return Err(FederationError::ToSelf(destination.to_owned()));
        }
        Ok(())
    }

    /// Where requests to `destination` go, found by server discovery.
    async fn base_url(&self, destination: &ServerName) -> Result<String, FederationError> {
        let target = self
            .inner
            .resolver
            .resolve(destination)
            .await
            .map_err(|e| FederationError::Unreachable {
                server: destination.to_owned(),
                message: e.to_string(),
            })?;
        Ok(target.base_url())
    }

    /// Sends a request and reads a successful answer's headers and at most `limit` bytes of
    /// its body; an error answer becomes `Remote` with its Matrix error code.
    async fn exchange(
        &self,
        destination: &ServerName,
        outgoing: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<(http::HeaderMap, Vec<u8>), FederationError> {
        let unreachable = |message: String| FederationError::Unreachable {
            server: destination.to_owned(),
            message,
        };
        let response = outgoing.send().await.map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        // An error's body is read up to its own small cap: it is only a Matrix error.
        let cap = if status.is_success() {
            limit
        } else {
            limit.min(64 * 1024)
        };
        let bytes = match read_capped(response, cap).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) if status.is_success() => {
                return Err(FederationError::TooLarge {
                    server: destination.to_owned(),
                    limit,
                })
            }
            Err(ReadError::TooLarge) => Vec::new(),
            Err(ReadError::Failed(e)) => return Err(unreachable(format!("reading the answer: {e}"))),
        };
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let mut extra = match body {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            let mut field = |name: &str| extra.remove(name).and_then(|v| v.as_str().map(str::to_owned));
            let (errcode, message) = (field("errcode"), field("error"));
            return Err(FederationError::Remote {
                server: destination.to_owned(),
                status: status.as_u16(),
                errcode: errcode.unwrap_or_else(|| "M_UNKNOWN".to_owned()),
                message: message.unwrap_or_default(),
                extra,
            });
        }
        Ok((headers, bytes))
    }
}

/// An error with its causes: reqwest's own message alone rarely says what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

enum ReadError {
    TooLarge,
    Failed(String),
}

/// Reads a body as it arrives, stopping as soon as it passes `limit` bytes.
async fn read_capped(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|len| len as usize > limit) {
        return Err(ReadError::TooLarge);
    }
    let mut stream = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReadError::Failed(error_chain(&e)))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
