//! `hfwasm serve` beside the script path (issue #18): the same calls on the same on-prem
//! tree, once as HostFactory runs them (a script, a process each) and once as REST requests
//! to a running server (a keep-alive connection, no process start), with the server's peak
//! RSS after all of them (`VmHWM`), in one run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a kept-alive connection; (wall time, status, body).
fn exchange(s: &mut BufReader<TcpStream>, addr: &str, path: &str, body: &str) -> Result<(Duration, u16, String)> {
    let t0 = Instant::now();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.get_mut().write_all(request.as_bytes())?;
    let mut status_line = String::new();
    s.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status")?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        s.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut buf = vec![0; length];
    s.read_exact(&mut buf)?;
    Ok((t0.elapsed(), status, String::from_utf8_lossy(&buf).into_owned()))
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// Runs the serve section; prints its rows.
pub fn run(bin: &Path, iterations: usize) -> Result<()> {
    let hosts = iterations * 2 + 5;
    let mut t = crate::Tree::new_onprem(bin, hosts)?;
    for _ in 0..3 {
        t.call("getAvailableTemplates", &json!({}))?;
    }
    let mut server = Command::new(bin);
    server
        .args(["serve", "--listen", "127.0.0.1:0", "--reconcile-secs", "0", "--confdir"])
        .arg(&t.conf)
        .arg("--workdir")
        .arg(&t.work)
        .env("HF_PROVIDER_NAME", "bench")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Server(server.spawn().context("start hfwasm serve")?);
    let mut lines = BufReader::new(child.0.stderr.take().context("stderr")?).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(a) = l.split("listening on http://").nth(1) {
                    break a.trim().to_string();
                }
            }
            _ => bail!("hfwasm serve ended before listening"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let stream = TcpStream::connect(&addr)?;
    stream.set_nodelay(true)?;
    let mut conn = BufReader::new(stream);
    let mut rest = |call: &str, body: &Value| -> Result<(Duration, Value)> {
        let (d, status, text) = exchange(&mut conn, &addr, &format!("/v1/hostfactory/{call}"), &body.to_string())?;
        if status != 200 {
            bail!("{call} over REST: {status} {text}");
        }
        Ok((d, serde_json::from_str(&text)?))
    };
    rest("getAvailableTemplates", &json!({}))?;

    println!("\nserve: the same calls as a script (a process each) and over REST (one kept-alive connection), {iterations} runs each");
    println!("{:<44} {:>10} {:>10} {:>9}", "call", "script ms", "REST ms", "ratio");
    let row = |name: &str, script: &mut [Duration], rest: &mut [Duration]| {
        let (s, r) = (median_ms(script), median_ms(rest));
        println!("{name:<44} {s:>10.2} {r:>10.2} {:>8.1}x", s / r.max(1e-9));
    };
    let template = json!({"template": {"templateId": "pool", "machineCount": 1}});
    let (mut s, mut r) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        s.push(t.call("getAvailableTemplates", &json!({}))?.wall);
        r.push(rest("getAvailableTemplates", &json!({}))?.0);
    }
    row("getAvailableTemplates", &mut s, &mut r);
    let (mut s, mut r, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let sample = t.call("requestMachines", &template)?;
        let v: Value = serde_json::from_str(&sample.stdout)?;
        ids.push(v["requestId"].as_str().context("requestId")?.to_string());
        s.push(sample.wall);
        let (d, v) = rest("requestMachines", &template)?;
        ids.push(v["requestId"].as_str().context("requestId")?.to_string());
        r.push(d);
    }
    row("requestMachines (1 host)", &mut s, &mut r);
    let (mut s, mut r) = (Vec::new(), Vec::new());
    for pair in ids.chunks(2) {
        s.push(t.call("getRequestStatus", &json!({"requests": [{"requestId": pair[0]}]}))?.wall);
        r.push(rest("getRequestStatus", &json!({"requests": [{"requestId": pair[1]}]}))?.0);
    }
    row("getRequestStatus (first poll)", &mut s, &mut r);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("serve's peak RSS after {} REST calls: {hwm}", iterations * 3 + 1);
    drop(child);
    Ok(())
}
