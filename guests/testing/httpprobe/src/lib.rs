//! Test guest for the `http` capability: `templates` makes each request its settings list
//! (`{"requests": [{"method", "url", "headers": {..}, "body"}]}`) through
//! `wasi:http/outgoing-handler` and reports, per request, the status, response headers and
//! body it got, or the error, in its template's extra keys. It also tries what a guest must
//! not manage: setting `Authorization` itself.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

/// One request as the settings list it.
fn request(spec: &serde_json::Value) -> serde_json::Value {
    match send(spec) {
        Ok(v) => v,
        Err(e) => serde_json::json!({"error": e}),
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

fn send(spec: &serde_json::Value) -> Result<serde_json::Value, String> {
    let url = spec["url"].as_str().ok_or("no url")?;
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    if let Some(h) = spec["headers"].as_object() {
        for (k, v) in h {
            let value = v.as_str().unwrap_or_default().as_bytes().to_vec();
            headers.append(k, &value).map_err(|e| format!("header {k}: {e:?}"))?;
        }
    }
    let req = OutgoingRequest::new(headers);
    req.set_method(&method(spec["method"].as_str().unwrap_or("GET")))
        .map_err(|()| "method")?;
    req.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http }))
        .map_err(|()| "scheme")?;
    req.set_authority(Some(authority)).map_err(|()| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let body = req.body().map_err(|()| "body")?;
    if let Some(text) = spec["body"].as_str() {
        let out = body.write().map_err(|()| "body stream")?;
        for chunk in text.as_bytes().chunks(4096) {
            out.blocking_write_and_flush(chunk).map_err(|e| format!("write: {e:?}"))?;
        }
        drop(out);
    }
    let pending = outgoing_handler::handle(req, None).map_err(|e| code(&e))?;
    OutgoingBody::finish(body, None).map_err(|e| code(&e))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(code(&e)),
        Some(Err(())) => return Err("response taken twice".into()),
        None => return Err("no response after block".into()),
    };
    let status = response.status();
    let header_list: Vec<String> = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(&v)))
        .collect();
    let incoming = response.consume().map_err(|()| "consume")?;
    let stream = incoming.stream().map_err(|()| "stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("read: {e:?}")),
        }
    }
    Ok(serde_json::json!({"status": status, "headers": header_list, "body": String::from_utf8_lossy(&bytes)}))
}

fn code(e: &ErrorCode) -> String {
    format!("{e:?}")
}

hfwasm_testing_common::adversarial_guest!(HttpProbe, |ctx| {
    let settings: serde_json::Value = serde_json::from_str(&ctx.settings_json).unwrap_or_default();
    let results: Vec<serde_json::Value> = settings["requests"].as_array().into_iter().flatten().map(request).collect();
    // Setting the credentials header itself must be refused by the host.
    let auth = match Fields::new().append("authorization", b"Bearer stolen") {
        Ok(()) => "ALLOWED".to_string(),
        Err(e) => format!("refused: {e:?}"),
    };
    let extra = serde_json::json!({"results": results, "set_authorization": auth});
    Ok(vec![hfwasm_testing_common::template("probe", Some(extra.to_string()))])
});
