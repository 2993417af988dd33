//! `http` capability: outbound HTTP for guests that drive a cloud's REST API, through the
//! standard `wasi:http/outgoing-handler` (so a guest in any language uses its usual client).
//! Every request is checked against the guest's grant (`guests.<name>.http`): the origin
//! (scheme, host, port), the method, the path prefixes, the request and response sizes, a
//! timeout and a cap per call; anything else is refused with `HTTP-request-denied` and a log
//! line naming the grant key. The host attaches the origin's credentials (a bearer token from a
//! file, OAuth2 client credentials, a managed identity's token), so a guest never sees a
//! secret: it may not set `Authorization` itself, redirects are not followed for it, and a
//! token endpoint's answers never reach it. 429 and 503 are retried honouring `Retry-After`;
//! every request is logged with method, host, path, status and duration.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView,
    WasiHttpHooks, WasiHttpView,
};

pub mod azure_auth_file;
pub mod tokens;

use super::GuestState;
use crate::engine::sandbox::HostWait;

/// The http capability's row of [`super::TABLE`]. Its settings (`guests.<name>.http`) are
/// the guest's [`HttpGrant`]; without them every request is refused.
pub const UNIT: super::Unit = super::Unit {
    name: "http",
    wit: super::Wit::Standard {
        interfaces: &["wasi:http/outgoing-handler", "wasi:http/types"],
        line: "0.2",
    },
    about: "outbound HTTP (wasi:http) to the origins its grant names, credentials attached by the host",
    check_settings: Some(|v| HttpGrant::from_settings(Some(v)).map(|_| ())),
    link: wasmtime_wasi_http::p2::add_only_http_to_linker_sync::<GuestState>,
    build: |l| {
        let grant = HttpGrant::from_settings(l.settings)?;
        let flight = Arc::new(Flight::new(grant.max_concurrent_requests));
        Ok(Box::new(GuestHttp {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                guest: l.guest.to_string(),
                grant: Arc::new(grant),
                sent: Arc::new(AtomicU32::new(0)),
                wait: l.wait.clone(),
                tokens: Arc::new(tokens::Tokens::new(l.lent.get::<tokens::TokenCacheDir>().map(|d| d.0.clone()))),
                flight,
                backend: l.lent.get::<Arc<dyn HttpBackend>>().cloned(),
            },
        }))
    },
};

/// Where a guest's requests go once checked and given their credentials: the network, or
/// (lent by a test) recorded answers, for a guest's decisions on what a fake cannot show.
pub trait HttpBackend: Send + Sync {
    /// The answer to `request`, or why there is none.
    fn answer(&self, request: Request<Bytes>) -> Result<Response<Bytes>, String>;
}

/// Longest `Retry-After` the host waits before retrying (a longer one fails the request).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest `max_request_bytes` a grant may set.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// Largest `max_response_bytes` a grant may set.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Longest `timeout_ms` a grant may set.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Largest `max_concurrent_requests` a grant may set.
pub const MAX_CONCURRENT_REQUESTS: u64 = 256;
/// Most token responses' bytes read from a credential endpoint.
const MAX_TOKEN_BYTES: usize = 64 << 10;

/// What a guest may do over HTTP (`guests.<name>.http`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// The origins it may call, each with its methods, paths and credentials.
    pub allow: Vec<Origin>,
    /// Per attempt: connect, first byte and between bytes, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest request body.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest response body.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most requests one guest call may send (retries not counted).
    #[serde(default = "default_max_requests")]
    pub max_requests_per_call: u32,
    /// Retries of a 429 or 503 answer (or a request that could not connect).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Most requests on their way at once; more wait their turn (not refused).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: u32,
}

impl HttpGrant {
    /// A grant of `allow` with every other key at its default.
    pub fn allowing(allow: Vec<Origin>) -> Self {
        Self {
            allow,
            timeout_ms: default_timeout_ms(),
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            max_requests_per_call: default_max_requests(),
            retries: default_retries(),
            max_concurrent_requests: default_max_concurrent(),
        }
    }

    /// The grant as capability settings (`guests.<name>.http`).
    pub fn to_settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

fn default_timeout_ms() -> u64 {
    30_000
}
fn default_max_request_bytes() -> usize {
    1 << 20
}
fn default_max_response_bytes() -> usize {
    16 << 20
}
fn default_max_requests() -> u32 {
    1000
}
fn default_max_concurrent() -> u32 {
    8
}
fn default_retries() -> u32 {
    4
}

/// One origin a guest may call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `scheme://host[:port]`, nothing else (`https://management.azure.com`).
    pub url: String,
    /// Methods allowed; empty = GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefixes allowed (`/subscriptions/<id>/`); empty = any path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Credentials the host attaches to every request to this origin.
    #[serde(default)]
    pub auth: Auth,
}

impl Auth {
    /// Whether the host fetches tokens for it (which it keeps, and renews on a 401).
    pub fn fetches_tokens(&self) -> bool {
        matches!(
            self,
            Auth::Oauth2ClientCredentials { .. } | Auth::AzureAuthFile { .. } | Auth::ManagedIdentity { .. }
        )
    }
}

/// How the host authenticates a guest's requests to an origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>` with the token read from a file (trimmed).
    Bearer {
        /// The file holding the token.
        token_file: PathBuf,
    },
    /// OAuth2 client credentials (an Azure AD / Entra service principal): a token from
    /// `token_url` for `client_id` and the secret in `client_secret_file`, for `scope`.
    Oauth2ClientCredentials {
        /// The token endpoint (`https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`).
        token_url: String,
        /// The application (client) id.
        client_id: String,
        /// The file holding the client secret.
        client_secret_file: PathBuf,
        /// The scope asked for (`https://management.azure.com/.default`).
        scope: String,
    },
    /// An Azure SDK authentication file (IBM's `AZURE_CREDENTIAL_FILE`: the Java SDK's
    /// properties or `az ad sp create-for-rbac --sdk-auth` JSON): client credentials of its
    /// service principal against its authority, for its Resource Manager endpoint.
    AzureAuthFile {
        /// The file.
        file: PathBuf,
    },
    /// A managed identity's token from the instance metadata service.
    ManagedIdentity {
        /// The resource the token is for (`https://management.azure.com/`).
        resource: String,
        /// The token endpoint (default Azure's IMDS,
        /// `http://169.254.169.254/metadata/identity/oauth2/token`).
        #[serde(default = "default_imds")]
        endpoint: String,
        /// A user-assigned identity's client id; none = the system-assigned identity.
        #[serde(default)]
        client_id: Option<String>,
    },
}

fn default_imds() -> String {
    "http://169.254.169.254/metadata/identity/oauth2/token".into()
}

/// An origin's parts, compared with a request's.
fn origin_of(url: &str) -> Result<(String, String, u16), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let port = match (uri.port_u16(), scheme.as_str()) {
        (Some(p), _) => p,
        (None, "https") => 443,
        (None, "http") => 80,
        _ => return Err(format!("`{url}`: the scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| format!("`{url}` names no host"))?.to_ascii_lowercase();
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(format!("`{url}`: an origin is scheme://host[:port]; put paths in `paths`"));
    }
    Ok((scheme, host, port))
}

impl HttpGrant {
    /// The grant config holds under `guests.<name>.http`; none = nothing allowed.
    pub fn from_settings(v: Option<&serde_json::Value>) -> Result<Self, String> {
        let Some(v) = v else {
            return Ok(Self::allowing(Vec::new()));
        };
        let g: Self = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        for (i, o) in g.allow.iter().enumerate() {
            origin_of(&o.url).map_err(|e| format!("allow[{i}].url: {e}"))?;
            if let Some(p) = o.paths.iter().find(|p| !p.starts_with('/')) {
                return Err(format!("allow[{i}].paths: `{p}` must start with /"));
            }
            if let Some(m) = o
                .methods
                .iter()
                .find(|m| m.parse::<http::Method>().is_err() || m.to_ascii_uppercase() != **m)
            {
                return Err(format!("allow[{i}].methods: `{m}` is not an HTTP method in capitals"));
            }
        }
        let within = |what: &str, v: u64, max: u64| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what}: {v} is outside 1..={max}"))
            }
        };
        within("timeout_ms", g.timeout_ms, MAX_TIMEOUT_MS)?;
        within("max_request_bytes", g.max_request_bytes as u64, MAX_REQUEST_BYTES as u64)?;
        within("max_response_bytes", g.max_response_bytes as u64, MAX_RESPONSE_BYTES as u64)?;
        within("max_requests_per_call", u64::from(g.max_requests_per_call), 1_000_000)?;
        within(
            "max_concurrent_requests",
            u64::from(g.max_concurrent_requests),
            MAX_CONCURRENT_REQUESTS,
        )?;
        if g.retries > 10 {
            return Err(format!("retries: {} is more than 10", g.retries));
        }
        Ok(g)
    }

    /// The origin entry allowing `method` on `uri`, or why none does (naming the key).
    fn allows(&self, method: &http::Method, uri: &http::Uri) -> Result<(usize, &Origin), String> {
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        let path = uri.path();
        let same_origin: Vec<(usize, &Origin)> = self
            .allow
            .iter()
            .enumerate()
            .filter(|(_, o)| origin_of(&o.url).is_ok_and(|(s, h, p)| s == scheme && h == host && p == port))
            .collect();
        if same_origin.is_empty() {
            return Err(format!("{scheme}://{host}:{port} is not in http.allow"));
        }
        let method_ok = |o: &Origin| {
            if o.methods.is_empty() {
                ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str())
            } else {
                o.methods.iter().any(|m| m == method.as_str())
            }
        };
        let path_ok = |o: &Origin| !escapes(path) && (o.paths.is_empty() || o.paths.iter().any(|p| path.starts_with(p.as_str())));
        same_origin
            .iter()
            .find(|(_, o)| method_ok(o) && path_ok(o))
            .copied()
            .ok_or_else(|| {
                let (i, _) = same_origin[0];
                format!("{method} {path} is outside http.allow[{i}] (its methods and paths)")
            })
    }
}

/// Whether `path` could leave a prefix on a server that normalises it: a `..` or `.`
/// segment, or an encoded dot, slash or backslash (which no cloud API path needs).
fn escapes(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    ["%2e", "%2f", "%5c", "\\"].iter().any(|e| lower.contains(e)) || path.split('/').any(|s| s == ".." || s == ".")
}

/// Per-guest state of the http capability: wasi:http's context and the host's hooks.
pub struct GuestHttp {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

/// The host's side of each request: grant check, credentials, retries, limits, logging.
struct Hooks {
    guest: String,
    grant: Arc<HttpGrant>,
    /// Requests sent in this call.
    sent: Arc<AtomicU32>,
    wait: HostWait,
    /// Tokens fetched for this guest's origins (this process's, and the work dir's).
    tokens: Arc<tokens::Tokens>,
    /// Its requests on their way.
    flight: Arc<Flight>,
    /// Recorded answers instead of the network (tests).
    backend: Option<Arc<dyn HttpBackend>>,
}

/// A guest's requests on their way: at most `max_concurrent_requests` at once, and the time
/// at least one was, which is host wait (requests that overlap are not counted twice, so a
/// guest cannot stretch its running-time limit by waiting on many at once).
struct Flight {
    slots: Arc<tokio::sync::Semaphore>,
    /// (requests on their way, since when at least one has been).
    busy: std::sync::Mutex<(usize, Option<Instant>)>,
}

impl Flight {
    fn new(max: u32) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max as usize)),
            busy: std::sync::Mutex::new((0, None)),
        }
    }

    /// A request starts (waiting for its turn counts as host wait too).
    fn begin(self: &Arc<Self>, wait: HostWait) -> InFlight {
        if let Ok(mut b) = self.busy.lock() {
            if b.0 == 0 {
                b.1 = Some(Instant::now());
            }
            b.0 += 1;
        }
        InFlight {
            flight: self.clone(),
            wait,
        }
    }
}

/// One request on its way; its end (or its future dropped) ends it.
struct InFlight {
    flight: Arc<Flight>,
    wait: HostWait,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut b) = self.flight.busy.lock() {
            b.0 = b.0.saturating_sub(1);
            if b.0 == 0
                && let Some(since) = b.1.take()
            {
                self.wait.add(since.elapsed());
            }
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let (slot, sandbox) = self.slot_and_sandbox::<GuestHttp>();
        WasiHttpCtxView {
            hooks: &mut slot.hooks,
            table: sandbox.table(),
            ctx: &mut slot.ctx,
        }
    }
}

/// Headers a guest may not set: hop-by-hop ones, and the credentials the host attaches.
fn forbidden(name: &HeaderName) -> bool {
    DEFAULT_FORBIDDEN_HEADERS.contains(name) || *name == header::AUTHORIZATION || *name == header::COOKIE
}

type Sent = Result<(Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for Hooks {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        forbidden(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(forbidden)
    }

    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let guest = self.guest.clone();
        let key = format!("guests.{guest}.http");
        let method = request.method().clone();
        let uri = request.uri().clone();
        let (host, path) = (uri.host().unwrap_or_default().to_string(), uri.path().to_string());
        let denied = |why: String| -> Box<dyn Future<Output = Sent> + Send> {
            tracing::warn!(guest = %guest, method = %method, host = %host, path = %path, "HTTP request denied: {why} ({key})");
            Box::new(async { Err(HttpError::HttpRequestDenied) })
        };
        let (index, origin) = match self.grant.allows(&method, &uri) {
            Ok((i, o)) => (i, o.clone()),
            Err(why) => return denied(why),
        };
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        if n >= self.grant.max_requests_per_call {
            return denied(format!(
                "more than max_requests_per_call ({}) requests in one call",
                self.grant.max_requests_per_call
            ));
        }
        let grant = self.grant.clone();
        let tokens = self.tokens.clone();
        let in_flight = self.flight.begin(self.wait.clone());
        let backend = self.backend.clone();
        Box::new(async move {
            let slot = in_flight.flight.slots.clone().acquire_owned().await;
            let out = exchange(&guest, &grant, index, &origin, &tokens, backend.as_deref(), request).await;
            drop(slot);
            drop(in_flight);
            out
        })
    }
}

/// The request with the grant's limits and the origin's credentials, sent (and retried on
/// 429, 503 or a failed connect), its response read whole within `max_response_bytes`.
async fn exchange(
    guest: &str,
    grant: &HttpGrant,
    index: usize,
    origin: &Origin,
    tokens: &tokens::Tokens,
    backend: Option<&dyn HttpBackend>,
    request: Request<WasiBody>,
) -> Sent {
    let (mut parts, body) = request.into_parts();
    let body = Limited::new(body, grant.max_request_bytes)
        .collect()
        .await
        .map_err(|_| HttpError::HttpRequestBodySize(Some(grant.max_request_bytes as u64)))?
        .to_bytes();
    if let Some(value) = credentials(grant, index, origin, tokens).await? {
        parts.headers.insert(header::AUTHORIZATION, value);
    }
    let timeout = Duration::from_millis(grant.timeout_ms);
    let options = timeouts(timeout);
    let mut attempt = 0;
    let mut renewed = false;
    loop {
        let t0 = Instant::now();
        // (status, Retry-After, the response with its whole body) or why there is none.
        let (status, retry_after, result) = match backend {
            Some(b) => match b.answer(Request::from_parts(parts.clone(), body.clone())) {
                Ok(recorded) => {
                    let (rparts, rbody) = recorded.into_parts();
                    (
                        Some(rparts.status),
                        retry_after(&rparts.headers),
                        Ok(Response::from_parts(rparts, full(rbody))),
                    )
                }
                Err(why) => (None, None, Err(HttpError::InternalError(Some(why)))),
            },
            None => {
                let req = Request::from_parts(parts.clone(), Full::new(body.clone()).map_err(|e| match e {}));
                match wasmtime_wasi_http::default_send_request(req, Some(options)).await {
                    Ok((response, io)) => {
                        // The connection's I/O runs beside the body's reading.
                        let io = tokio::spawn(io);
                        let (rparts, rbody) = response.into_parts();
                        let read = Limited::new(rbody, grant.max_response_bytes).collect().await;
                        let _ = io.await;
                        match read {
                            Ok(collected) => (
                                Some(rparts.status),
                                retry_after(&rparts.headers),
                                Ok(Response::from_parts(rparts, full(collected.to_bytes()))),
                            ),
                            Err(_) => (
                                Some(rparts.status),
                                None,
                                Err(HttpError::HttpResponseBodySize(Some(grant.max_response_bytes as u64))),
                            ),
                        }
                    }
                    Err(e) => (None, None, Err(e)),
                }
            }
        };
        tracing::info!(
            guest,
            method = %parts.method,
            host = parts.uri.host().unwrap_or_default(),
            path = parts.uri.path(),
            status = status.map(|s| s.as_u16()).unwrap_or(0),
            duration_ms = t0.elapsed().as_millis() as u64,
            elapsed_us = t0.elapsed().as_micros() as u64,
            attempt,
            "http request"
        );
        crate::metrics::cloud(
            "http",
            &format!("{} {}", parts.method, parts.uri.host().unwrap_or_default()),
            &status.map_or_else(|| "no answer".to_string(), |s| format!("{}xx", s.as_u16() / 100)),
        );
        // A kept token the origin no longer takes (revoked, or the principal's role changed):
        // forgotten (unless a request beside this one has renewed it already), and the
        // request sent once more with the fresh one.
        if status == Some(http::StatusCode::UNAUTHORIZED) && !renewed && origin.auth.fetches_tokens() {
            renewed = true;
            let sent = parts.headers.get(header::AUTHORIZATION).cloned();
            if let Some(token) = sent.as_ref().and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
                tokens.forget(index, origin, token);
            }
            if let Some(value) = credentials(grant, index, origin, tokens).await?
                && Some(&value) != sent.as_ref()
            {
                parts.headers.insert(header::AUTHORIZATION, value);
                continue;
            }
        }
        let retryable = match (&status, &result) {
            (Some(s), _) => *s == http::StatusCode::TOO_MANY_REQUESTS || *s == http::StatusCode::SERVICE_UNAVAILABLE,
            (None, Err(HttpError::Connect(_) | HttpError::ConnectionTimeout | HttpError::ConnectionRefused)) => true,
            _ => false,
        };
        if !retryable || attempt >= grant.retries {
            return result.map(|r| (r, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>));
        }
        let delay = match retry_after {
            Some(s) if Duration::from_secs(s) > MAX_RETRY_AFTER => {
                return result.map(|r| (r, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>));
            }
            Some(s) => Duration::from_secs(s),
            None => Duration::from_millis(200 << attempt.min(6)),
        };
        tracing::info!(
            guest,
            attempt,
            delay_ms = delay.as_millis() as u64,
            "http request: retrying after a 429, 503 or failed connect"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// A `Retry-After` of whole seconds.
fn retry_after(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The same bound on connecting, the first byte and the gap between bytes.
fn timeouts(timeout: Duration) -> RequestOptions {
    RequestOptions {
        connect_timeout: Some(timeout),
        first_byte_timeout: Some(timeout),
        between_bytes_timeout: Some(timeout),
    }
}

fn full(b: Bytes) -> WasiBody {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

/// The `Authorization` value for `origin`, fetched (and cached for the process) when it is
/// a token; a failure says which credential failed, never what its endpoint answered.
async fn credentials(grant: &HttpGrant, index: usize, origin: &Origin, tokens: &tokens::Tokens) -> Result<Option<HeaderValue>, HttpError> {
    let fail = |m: String| {
        tracing::error!("http.allow[{index}].auth: {m}");
        HttpError::InternalError(Some(format!(
            "the host could not get credentials for http.allow[{index}] (see the host log)"
        )))
    };
    let bearer = |t: &str| HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| fail("the token is not a valid header value".into()));
    if let Some(t) = tokens.get(index, origin) {
        return bearer(&t).map(Some);
    }
    // One fetch at a time: requests side by side wait for it and share its token.
    let _fetching = tokens.fetching.lock().await;
    if let Some(t) = tokens.get(index, origin) {
        return bearer(&t).map(Some);
    }
    let timeout = Duration::from_millis(grant.timeout_ms);
    let t0 = Instant::now();
    let (token, lifetime) = match &origin.auth {
        Auth::None => return Ok(None),
        Auth::Bearer { token_file } => {
            let t =
                crate::limits::read_capped(token_file, 64 << 10).map_err(|e| fail(format!("token_file {}: {e}", token_file.display())))?;
            return bearer(t.trim()).map(Some);
        }
        Auth::Oauth2ClientCredentials {
            token_url,
            client_id,
            client_secret_file,
            scope,
        } => {
            let secret = crate::limits::read_capped(client_secret_file, 64 << 10)
                .map_err(|e| fail(format!("client_secret_file {}: {e}", client_secret_file.display())))?;
            client_credentials(token_url, client_id, secret.trim(), scope, timeout, &fail).await?
        }
        Auth::AzureAuthFile { file } => {
            let f = azure_auth_file::AzureAuthFile::read(file).map_err(&fail)?;
            client_credentials(&f.token_url(), &f.client_id, &f.client_secret, &f.scope(), timeout, &fail).await?
        }
        Auth::ManagedIdentity {
            resource,
            endpoint,
            client_id,
        } => {
            let mut url = format!("{endpoint}?api-version=2018-02-01&resource={}", form_encode(resource));
            if let Some(c) = client_id {
                url.push_str(&format!("&client_id={}", form_encode(c)));
            }
            let req = Request::get(url.as_str())
                .header("Metadata", "true")
                .body(Full::new(Bytes::new()))
                .map_err(|e| fail(format!("endpoint {endpoint}: {e}")))?;
            token_from(req, timeout, &fail).await?
        }
    };
    tracing::info!(
        origin = %origin.url,
        elapsed_us = t0.elapsed().as_micros() as u64,
        "http credentials: token fetched (kept until a minute before it expires)"
    );
    tokens.put(index, origin, &token, lifetime);
    bearer(&token).map(Some)
}

/// A token by OAuth2 client credentials (an Entra ID service principal).
async fn client_credentials(
    token_url: &str,
    client_id: &str,
    secret: &str,
    scope: &str,
    timeout: Duration,
    fail: &(dyn Fn(String) -> HttpError + Sync),
) -> Result<(String, Duration), HttpError> {
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
        form_encode(client_id),
        form_encode(secret),
        form_encode(scope)
    );
    let req = Request::post(token_url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| fail(format!("token_url {token_url}: {e}")))?;
    token_from(req, timeout, fail).await
}

/// An access token and its lifetime from a token endpoint's JSON answer.
async fn token_from(
    req: Request<Full<Bytes>>,
    timeout: Duration,
    fail: &(dyn Fn(String) -> HttpError + Sync),
) -> Result<(String, Duration), HttpError> {
    let uri = req.uri().clone();
    let options = timeouts(timeout);
    let req = req.map(|b| b.map_err(|e| match e {}));
    let (response, io) = wasmtime_wasi_http::default_send_request(req, Some(options))
        .await
        .map_err(|e| fail(format!("{uri}: {e}")))?;
    let io = tokio::spawn(io);
    let (parts, body) = response.into_parts();
    let read = Limited::new(body, MAX_TOKEN_BYTES).collect().await;
    let _ = io.await;
    if !parts.status.is_success() {
        // The body may echo what was sent; it goes nowhere.
        return Err(fail(format!("{uri} answered {}", parts.status)));
    }
    let bytes = read
        .map_err(|_| fail(format!("{uri}: the answer is larger than {MAX_TOKEN_BYTES} bytes")))?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| fail(format!("{uri}: the answer is not JSON")))?;
    let token = v["access_token"]
        .as_str()
        .ok_or_else(|| fail(format!("{uri}: the answer has no access_token")))?
        .to_string();
    // `expires_in` is a number (Entra) or a string of one (IMDS).
    let secs = v["expires_in"]
        .as_u64()
        .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(300);
    Ok((token, Duration::from_secs(secs)))
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(v: serde_json::Value) -> Result<HttpGrant, String> {
        HttpGrant::from_settings(Some(&v))
    }

    #[test]
    fn a_grant_names_origins_methods_and_paths_and_nothing_else_passes() {
        let g = grant(serde_json::json!({"allow": [
            {"url": "https://management.azure.com", "methods": ["GET", "PUT"], "paths": ["/subscriptions/s1/"]},
            {"url": "http://127.0.0.1:8080"}
        ]}))
        .expect("valid");
        let ok = |m: &str, u: &str| g.allows(&m.parse().expect("method"), &u.parse().expect("uri")).map(|(i, _)| i);
        assert_eq!(ok("GET", "https://management.azure.com/subscriptions/s1/vms"), Ok(0));
        assert_eq!(ok("PUT", "https://MANAGEMENT.azure.com:443/subscriptions/s1/x"), Ok(0));
        assert!(ok("DELETE", "https://management.azure.com/subscriptions/s1/x").is_err());
        assert!(ok("GET", "https://management.azure.com/subscriptions/s2/x").is_err());
        assert!(ok("GET", "https://management.azure.com/subscriptions/s1/../s2/x").is_err());
        assert!(ok("GET", "https://management.azure.com/subscriptions/s1/%2E%2E/s2/x").is_err());
        assert!(ok("GET", "https://management.azure.com/subscriptions/s1/..%2Fs2").is_err());
        assert!(ok("GET", "https://management.azure.com/subscriptions/s1/vm?api-version=2024-03-01").is_ok());
        assert!(
            ok("GET", "http://management.azure.com/subscriptions/s1/x").is_err(),
            "another scheme is another origin"
        );
        assert!(ok("GET", "https://evil.example/subscriptions/s1/").is_err());
        assert_eq!(ok("POST", "http://127.0.0.1:8080/anything"), Ok(1));
        assert!(ok("GET", "http://127.0.0.1:8081/").is_err(), "another port");
        assert!(ok("CONNECT", "http://127.0.0.1:8080/").is_err(), "not a default method");
        let e = ok("GET", "https://evil.example/").expect_err("denied");
        assert!(e.contains("evil.example") && e.contains("http.allow"), "{e}");
    }

    #[test]
    fn bad_grants_are_refused_with_the_key() {
        for (v, want) in [
            (serde_json::json!({"allow": [{"url": "ftp://x"}]}), "allow[0].url"),
            (serde_json::json!({"allow": [{"url": "https://x/path"}]}), "paths"),
            (
                serde_json::json!({"allow": [{"url": "https://x", "paths": ["sub"]}]}),
                "allow[0].paths",
            ),
            (
                serde_json::json!({"allow": [{"url": "https://x", "methods": ["get"]}]}),
                "allow[0].methods",
            ),
            (serde_json::json!({"allow": [], "timeout_ms": 0}), "timeout_ms"),
            (serde_json::json!({"allow": [], "retries": 11}), "retries"),
            (serde_json::json!({"allow": [], "proxy": "x"}), "proxy"),
            (
                serde_json::json!({"allow": [{"url": "https://x", "auth": {"type": "kerberos"}}]}),
                "kerberos",
            ),
        ] {
            let e = grant(v.clone()).expect_err("refused");
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(HttpGrant::from_settings(None).expect("none").allow.is_empty());
    }

    #[test]
    fn the_guest_may_not_set_credentials() {
        assert!(forbidden(&header::AUTHORIZATION) && forbidden(&header::COOKIE) && forbidden(&header::HOST));
        assert!(!forbidden(&header::CONTENT_TYPE));
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
