//! A small blocking HTTP client over `wasi:http/outgoing-handler`, the host's `http`
//! capability: what a guest that calls a cloud's REST API needs, without its own HTTP stack.
//! The host attaches credentials, enforces the grant and retries 429/503; a request
//! outside the grant fails with `HTTP-request-denied` (see the host log for the key).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

/// A response: status, headers (names lower-case) and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers as (lower-case name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub enum HttpError {
    /// The host refused it: outside this guest's `http` grant (origin, method, path, size
    /// or request count); the host log names the key.
    Denied(String),
    /// It could not be sent or answered (connect, timeout, protocol); retrying later may work.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "denied by the host's http grant: {m}"),
            HttpError::Failed(m) => write!(f, "{m}"),
        }
    }
}

fn error(e: &ErrorCode) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied(format!("{e:?}")),
        other => HttpError::Failed(format!("{other:?}")),
    }
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// One request for [`send_all`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// `https://host[:port]/path?query`.
    pub url: &'a str,
    /// Header (name, value) pairs; the host refuses `Authorization` and `Cookie`.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body, when any.
    pub body: Option<&'a [u8]>,
}

/// A request on its way: sent, its response not read yet.
struct Pending {
    what: String,
    response: wasip2::http::types::FutureIncomingResponse,
}

/// Sends `method url` with `headers` and `body`, and reads the whole response.
pub fn send(method_name: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Response, HttpError> {
    finish(start(method_name, url, headers, body)?)
}

/// Sends every request before reading any answer, at most `window` on their way at once
/// (the host also caps a guest's requests in flight: its grant's `max_concurrent_requests`);
/// one result per request, in order. A cloud's slow create calls then overlap instead of
/// adding up.
pub fn send_all(requests: &[Request<'_>], window: usize) -> Vec<Result<Response, HttpError>> {
    let mut out = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(window.max(1)) {
        let started: Vec<Result<Pending, HttpError>> = chunk.iter().map(|r| start(r.method, r.url, r.headers, r.body)).collect();
        out.extend(started.into_iter().map(|p| p.and_then(finish)));
    }
    out
}

fn start(method_name: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Pending, HttpError> {
    let bad = |m: &str| HttpError::Failed(format!("{method_name} {url}: {m}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for (k, v) in headers {
        fields.append(k, v.as_bytes()).map_err(|e| bad(&format!("header {k}: {e:?}")))?;
    }
    let req = OutgoingRequest::new(fields);
    req.set_method(&method(method_name)).map_err(|()| bad("method"))?;
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => Scheme::Other(other.to_string()),
    };
    req.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    req.set_authority(Some(authority)).map_err(|()| bad("authority"))?;
    req.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let out_body = req.body().map_err(|()| bad("body"))?;
    if let Some(bytes) = body {
        let out = out_body.write().map_err(|()| bad("body stream"))?;
        for chunk in bytes.chunks(4096) {
            out.blocking_write_and_flush(chunk).map_err(|e| bad(&format!("write: {e:?}")))?;
        }
        drop(out);
    }
    let pending = outgoing_handler::handle(req, None).map_err(|e| error(&e))?;
    OutgoingBody::finish(out_body, None).map_err(|e| error(&e))?;
    Ok(Pending {
        what: format!("{method_name} {url}"),
        response: pending,
    })
}

fn finish(p: Pending) -> Result<Response, HttpError> {
    let bad = |m: &str| HttpError::Failed(format!("{}: {m}", p.what));
    let pending = &p.response;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(error(&e)),
        Some(Err(())) => return Err(bad("response taken twice")),
        None => return Err(bad("no response")),
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response.consume().map_err(|()| bad("consume"))?;
    let stream = incoming.stream().map_err(|()| bad("stream"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(bad(&format!("read: {e:?}"))),
        }
    }
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}
