//! Process-wide counters for `hfwasm serve`'s Prometheus `/metrics`: HostFactory calls by
//! name and outcome with a latency histogram, cloud calls by service, action and outcome,
//! and guest failures by kind. Recording is a mutex-guarded map update, cheap beside the
//! calls it counts; a script call records too, and pushes them to a Pushgateway when
//! `monitoring` says so (`push`), since its counts end with its process.

pub mod push;

pub use push::PushTarget;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// Upper bounds (seconds) of the call latency histogram's buckets.
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// One histogram: counts per bucket (cumulative when rendered), sum and count.
#[derive(Default, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Counters {
    calls: BTreeMap<(String, String), u64>,
    latency: BTreeMap<String, Histogram>,
    cloud: BTreeMap<(String, String, String), u64>,
    guest_failures: BTreeMap<(String, String), u64>,
}

fn counters() -> &'static Mutex<Counters> {
    static C: OnceLock<Mutex<Counters>> = OnceLock::new();
    C.get_or_init(Mutex::default)
}

fn with(f: impl FnOnce(&mut Counters)) {
    // A panic while recording cannot leave a count half-written: the map update is one step.
    let mut c = counters().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut c);
}

/// A HostFactory call `call` ended with `outcome` (`ok` or the error code) after `secs`.
pub fn call(call: &str, outcome: &str, secs: f64) {
    with(|c| {
        *c.calls.entry((call.to_string(), outcome.to_string())).or_default() += 1;
        c.latency.entry(call.to_string()).or_default().observe(secs);
    });
}

/// A cloud call by a capability: `service` (`ec2`, `http`), `action` (an EC2 action, or an
/// HTTP method and host) and `outcome` (`ok`, an error code or an HTTP status class).
pub fn cloud(service: &str, action: &str, outcome: &str) {
    with(|c| {
        *c.cloud
            .entry((service.to_string(), action.to_string(), outcome.to_string()))
            .or_default() += 1
    });
}

/// Guest `guest` failed by `kind` (a trap, or the limit it hit: `timeout`, `memory`, ...).
pub fn guest_failure(guest: &str, kind: &str) {
    with(|c| *c.guest_failures.entry((guest.to_string(), kind.to_string())).or_default() += 1);
}

/// Starts metric family `name` of `kind` (`counter`, `gauge`, `histogram`) in `out`: its
/// `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value in the text format's escaping.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The counters in Prometheus' text exposition format (version 0.0.4).
pub fn render() -> String {
    let c = counters().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = String::new();
    family(
        &mut out,
        "hfwasm_calls_total",
        "counter",
        "HostFactory calls answered, by call and outcome (ok or the error code).",
    );
    for ((call, outcome), n) in &c.calls {
        let _ = writeln!(
            out,
            "hfwasm_calls_total{{call=\"{}\",outcome=\"{}\"}} {n}",
            label(call),
            label(outcome)
        );
    }
    family(
        &mut out,
        "hfwasm_call_duration_seconds",
        "histogram",
        "Wall time of HostFactory calls, by call.",
    );
    for (call, h) in &c.latency {
        let call = label(call);
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "hfwasm_call_duration_seconds_bucket{{call=\"{call}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "hfwasm_call_duration_seconds_bucket{{call=\"{call}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "hfwasm_call_duration_seconds_sum{{call=\"{call}\"}} {}", h.sum);
        let _ = writeln!(out, "hfwasm_call_duration_seconds_count{{call=\"{call}\"}} {}", h.count);
    }
    family(
        &mut out,
        "hfwasm_cloud_calls_total",
        "counter",
        "Cloud API calls made for guests, by service, action and outcome.",
    );
    for ((service, action, outcome), n) in &c.cloud {
        let _ = writeln!(
            out,
            "hfwasm_cloud_calls_total{{service=\"{}\",action=\"{}\",outcome=\"{}\"}} {n}",
            label(service),
            label(action),
            label(outcome)
        );
    }
    family(
        &mut out,
        "hfwasm_guest_failures_total",
        "counter",
        "Guest calls that trapped or hit a limit, by guest and kind.",
    );
    for ((guest, kind), n) in &c.guest_failures {
        let _ = writeln!(
            out,
            "hfwasm_guest_failures_total{{guest=\"{}\",kind=\"{}\"}} {n}",
            label(guest),
            label(kind)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_and_buckets_render_in_the_text_format() {
        super::call("getRequestStatus", "ok", 0.003);
        super::call("getRequestStatus", "ok", 0.2);
        super::cloud("ec2", "Describe\"Instances", "ok");
        let text = super::render();
        assert!(
            text.contains("hfwasm_calls_total{call=\"getRequestStatus\",outcome=\"ok\"} "),
            "{text}"
        );
        assert!(text.contains("hfwasm_call_duration_seconds_bucket{call=\"getRequestStatus\",le=\"0.005\"} "));
        assert!(
            text.contains("action=\"Describe\\\"Instances\""),
            "label values are escaped: {text}"
        );
        // Buckets are cumulative: the 0.25 s bucket holds both observations of this test.
        let le = text
            .lines()
            .find(|l| l.starts_with("hfwasm_call_duration_seconds_bucket{call=\"getRequestStatus\",le=\"0.25\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        assert!(le.is_some_and(|n| n >= 2), "{text}");
    }
}
