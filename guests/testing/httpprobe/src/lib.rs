//! Test guest for the `http` capability: `templates` makes each request its settings list
//! (`{"requests": [{"method", "url", "headers": {..}, "body"}]}`) through
//! `wasi:http/outgoing-handler` and reports, per request, the status, response headers and
//! body it got, or the error, in its template's extra keys. It also tries what a guest must
//! not manage: setting `Authorization` itself. With `"concurrent": true` it sends every request
//! before reading any answer (the SDK's `send_all`).

use hfwasm_guest_sdk::http::{self, HttpError};
use wasip2::http::types::Fields;

/// One request as the settings list it.
fn request(spec: &serde_json::Value) -> serde_json::Value {
    let headers: Vec<(String, String)> = spec["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let sent = http::send(
        spec["method"].as_str().unwrap_or("GET"),
        spec["url"].as_str().unwrap_or_default(),
        &headers,
        spec["body"].as_str().map(str::as_bytes),
    );
    reported(sent)
}

/// What came back, as the probe reports it.
fn reported(sent: Result<http::Response, HttpError>) -> serde_json::Value {
    match sent {
        Ok(r) => {
            let header_list: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            serde_json::json!({"status": r.status, "headers": header_list, "body": r.text()})
        }
        Err(HttpError::Denied(e) | HttpError::Failed(e)) => serde_json::json!({"error": e}),
    }
}

hfwasm_testing_common::adversarial_guest!(HttpProbe, |ctx| {
    let settings: serde_json::Value = serde_json::from_str(&ctx.settings_json).unwrap_or_default();
    let specs: Vec<serde_json::Value> = settings["requests"].as_array().cloned().unwrap_or_default();
    let results: Vec<serde_json::Value> = if settings["concurrent"] == true {
        // Every request on its way before any answer is read.
        let requests: Vec<http::Request<'_>> = specs
            .iter()
            .map(|s| http::Request {
                method: s["method"].as_str().unwrap_or("GET"),
                url: s["url"].as_str().unwrap_or_default(),
                headers: &[],
                body: None,
            })
            .collect();
        http::send_all(&requests, requests.len()).into_iter().map(reported).collect()
    } else {
        specs.iter().map(request).collect()
    };
    // Setting the credentials header itself must be refused by the host.
    let auth = match Fields::new().append("authorization", b"Bearer stolen") {
        Ok(()) => "ALLOWED".to_string(),
        Err(e) => format!("refused: {e:?}"),
    };
    let extra = serde_json::json!({"results": results, "set_authorization": auth});
    Ok(vec![hfwasm_testing_common::template("probe", Some(extra.to_string()))])
});
