//! Seed 001's `monitoring: {enabled, metrics_endpoint}`: a script call is a process of a
//! few milliseconds that no scraper can catch, so after answering HostFactory it pushes its
//! metrics (the call's outcome and time, its cloud calls, guest failures) to a Prometheus
//! Pushgateway at `metrics_endpoint`. One group per provider instance and call name, so each
//! group holds the latest call of that name (`push_time_seconds` tells when). A push is
//! bounded by [`PUSH_TIMEOUT`] and its failure is logged, never HostFactory's problem.
//! Plain HTTP only (a Pushgateway or agent on the site network); `hfwasm serve` serves
//! `/metrics` for scraping instead.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest one push may take, name lookup included.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where pushes go: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// Host name or address.
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path of the Pushgateway's metrics API (`/metrics`), without a trailing `/`.
    pub path: String,
}

impl PushTarget {
    /// Parses `metrics_endpoint`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                "https is not supported for pushes; use a Pushgateway (or agent) reachable over http:// on the site network".to_string()
            } else {
                "not an http:// URL (a Prometheus Pushgateway's, e.g. http://pushgateway:9091/metrics)".to_string()
            }
        })?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
            return Err("give host[:port] and a path, without credentials, query or fragment".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            // [v6 address] or [v6 address]:port
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
                match after.strip_prefix(':') {
                    Some(p) => (h, p),
                    None if after.is_empty() => (h, "80"),
                    None => return Err(format!("`{after}` after the address is not :port")),
                }
            }
            None => authority.rsplit_once(':').unwrap_or((authority, "80")),
        };
        let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
        let path = match path.trim_end_matches('/') {
            "" => "/metrics".to_string(),
            p => p.to_string(),
        };
        Ok(Self {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The group URL path of `instance`'s `call`: `<path>/job/hfwasm/instance/<i>/call/<c>`.
    pub fn group(&self, instance: &str, call: &str) -> String {
        format!(
            "{}/job/hfwasm/{}/{}",
            self.path,
            segment("instance", instance),
            segment("call", call)
        )
    }
}

/// One grouping label as path segments: plain when URL-safe, else in the Pushgateway's
/// base64 form (`label@base64/<url-safe base64>`).
fn segment(label: &str, value: &str) -> String {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        format!("{label}/{value}")
    } else {
        let b64 = aws_smithy_types::base64::encode(value.as_bytes())
            .replace('+', "-")
            .replace('/', "_");
        format!("{label}@base64/{b64}")
    }
}

/// Pushes this process's metrics (see [`super::render`]) for `instance`'s `call` to `url`;
/// the error says what failed (logged by the caller).
pub fn push(url: &str, instance: &str, call: &str) -> Result<(), String> {
    let target = PushTarget::parse(url)?;
    let body = super::render();
    let deadline = Instant::now() + PUSH_TIMEOUT;
    let addr = resolve(&target.host, target.port, PUSH_TIMEOUT)?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, left()).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
    let path = target.group(instance, call);
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: hfwasm/{}\r\n\r\n{body}",
        target.port,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    )
    .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut answer = Vec::new();
    // The status line and a little of the body say enough; never read more than 4 KiB.
    let _ = s.take(4096).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("");
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(_) => Err(format!(
            "{addr} answered `{status}`: {}",
            text.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim())
        )),
        None => Err(format!("{addr} gave no HTTP answer within {} ms", PUSH_TIMEOUT.as_millis())),
    }
}

/// The first address of `host`, looked up on a helper thread so a resolver that hangs
/// cannot hold the process past `timeout`.
fn resolve(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = format!("{host}:{port}");
    let spawned = std::thread::Builder::new().name("hfwasm-push-resolve".into()).spawn(move || {
        let _ = tx.send(name.to_socket_addrs().map(|mut a| a.next()));
    });
    if spawned.is_err() {
        return Err("cannot start the name lookup".into());
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(Some(a))) => Ok(a),
        Ok(Ok(None)) => Err(format!("{host} has no address")),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!("no answer resolving {host} within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_groups_are_pushgateway_paths() {
        let t = PushTarget::parse("http://monitoring.internal:8080/metrics").expect("the seed's");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("monitoring.internal", 8080, "/metrics")
        );
        assert_eq!(
            t.group("aws-prod", "requestMachines"),
            "/metrics/job/hfwasm/instance/aws-prod/call/requestMachines"
        );
        let t = PushTarget::parse("http://pushgateway/").expect("defaults");
        assert_eq!((t.port, t.path.as_str()), (80, "/metrics"));
        assert_eq!(t.group("a/b", "c"), "/metrics/job/hfwasm/instance@base64/YS9i/call/c");
        let t = PushTarget::parse("http://[::1]:9091/metrics").expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9091));
        for bad in [
            "https://x/metrics",
            "monitoring:8080",
            "http://u:p@x/metrics",
            "http://x:port/",
            "http://x/m?a=1",
        ] {
            assert!(PushTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
