//! `hfwasm serve`: the five HostFactory calls, machines, requests, health and Prometheus
//! metrics over HTTP, on the same service layer and store as the scripts (which keep
//! working beside it: every call is one transaction against the shared store).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};

use super::{DirArgs, dirs, print_failure};
use hfwasm::hf::{Call, ErrorCode, HfError};
use hfwasm::plugin::Plugin;

/// Where to listen and who may call.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default; any other address needs --token-file.
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// File holding the bearer token every request but /health/* must carry
    /// (`Authorization: Bearer <token>`); its first line is the token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Calls served at once; more wait their turn (each call is a guest run and a store transaction).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub workers: usize,
    /// Seconds between passes of the background reconciler (abandoned requests, returns
    /// nobody polls, the orphan scan), run by the one replica holding the store's lease
    /// (held for three passes unless renewed); 0 turns it off. Default: the seed config's
    /// `provider.health_check_interval`, else 30.
    #[arg(long, value_name = "SECS")]
    pub reconcile_secs: Option<u64>,
}

/// Whether this replica held the reconciler lease at its last pass (for `/metrics`).
static LEADER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Requests the reconciler repaired since start (for `/metrics`).
static RECONCILED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This replica's name in the lease: host, process and start time, unique across replicas.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}:{}", host.trim(), std::process::id(), hfwasm::clock::now_secs())
}

/// Runs a reconciler pass every `every` seconds on a thread of its own, for as long as
/// the process lives; each pass first takes or renews the lease.
fn reconciler(state: Arc<State>, every: u64, holder: String) {
    let ttl = every.saturating_mul(3).max(3);
    let spawned = std::thread::Builder::new().name("hfwasm-reconciler".into()).spawn(move || {
        loop {
            let was = LEADER.load(std::sync::atomic::Ordering::Relaxed);
            match Plugin::open(state.dirs.clone()).and_then(|p| p.reconcile(&holder, ttl)) {
                Ok(Some(n)) => {
                    if !was {
                        tracing::info!(holder, "reconciler: this replica holds the lease");
                    }
                    LEADER.store(true, std::sync::atomic::Ordering::Relaxed);
                    RECONCILED.fetch_add(u64::try_from(n).unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                    if n > 0 {
                        tracing::info!(repaired = n, "reconciler: repaired requests");
                    }
                }
                Ok(None) => {
                    if was {
                        tracing::info!(holder, "reconciler: another replica holds the lease");
                    }
                    LEADER.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    // Without the store nobody can hold the lease; the next pass tries again.
                    tracing::warn!(error = %e, "reconciler pass failed");
                    LEADER.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(every));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the reconciler");
    }
}

/// What every request handler shares.
struct State {
    /// The provider instance's dirs: each request opens the plugin from them, reading the
    /// config and the inventory as a script does, so an edit (a host decommissioned from
    /// the inventory, a template added) counts from the next request without a restart.
    dirs: hfwasm::hf::ProviderDirs,
    token: Option<String>,
}

/// The OpenAPI document of the routes below, served at /openapi.json.
const OPENAPI: &str = include_str!("serve_openapi.json");

/// Serves until SIGTERM or SIGINT.
pub fn run(d: &DirArgs, args: &ServeArgs) -> ExitCode {
    let dirs = match dirs(d) {
        Ok(d) => d,
        Err(e) => return super::print_error(&e),
    };
    let plugin = match Plugin::open(dirs) {
        Ok(p) => p,
        Err(e) => return super::print_error(&e),
    };
    super::init_log(&plugin);
    let token = match &args.token_file {
        Some(f) => match std::fs::read_to_string(f).map(|t| t.lines().next().unwrap_or_default().trim().to_string()) {
            Ok(t) if !t.is_empty() => Some(t),
            Ok(_) => return print_failure(format!("--token-file {}: the first line is empty", f.display())),
            Err(e) => return print_failure(format!("--token-file {}: {e}", f.display())),
        },
        None if !args.listen.ip().is_loopback() => {
            return print_failure(format!(
                "--listen {} is not a loopback address: give --token-file so that only holders of the token can call",
                args.listen
            ));
        }
        None => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return print_failure(format!("cannot start the runtime: {e}")),
    };
    let every = args.reconcile_secs.or(plugin.config.reconcile_secs).unwrap_or(30);
    let state = Arc::new(State {
        dirs: plugin.dirs.clone(),
        token,
    });
    drop(plugin);
    let holder = holder();
    if every > 0 {
        reconciler(state.clone(), every, holder.clone());
    }
    let served = runtime.block_on(serve(args.listen, state.clone()));
    if every > 0
        && let Err(e) = Plugin::open(state.dirs.clone()).and_then(|p| p.release_lease(&holder))
    {
        tracing::warn!(error = %e, "could not give up the reconciler lease; it expires by itself");
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => print_failure(e),
    }
}

async fn serve(addr: SocketAddr, state: Arc<State>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%bound, "serving");
    // The address actually bound (port 0 picks one), for whoever started us.
    eprintln!("hfwasm serve: listening on http://{bound}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        // Answers are small and go out at once (Nagle would hold them for the client's ACK).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    tracing::info!("stopping: no new connections; calls under way finish in their own transactions");
    Ok(())
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    // Serialising a document or an answer cannot fail (string keys, no non-finite floats).
    respond(status, "application/json", serde_json::to_string(v).unwrap_or_default())
}

fn error(e: &HfError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &e.to_envelope())
}

/// Whether the request carries the token (always, without one configured).
fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else { return true };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared in full whatever the first difference, so timing does not tell how much matched.
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Runs `f` on the plugin, opened for this request, off the async threads (a call is a
/// guest run and store I/O).
async fn blocking<T: Send + 'static>(
    state: &Arc<State>,
    f: impl FnOnce(&Plugin) -> Result<T, HfError> + Send + 'static,
) -> Result<T, HfError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || Plugin::open(state.dirs.clone()).and_then(|p| f(&p)))
        .await
        .map_err(|e| HfError::new(ErrorCode::Internal, format!("the call's worker ended: {e}")))
        .and_then(|r| r)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let query = req.uri().query().unwrap_or_default().to_string();
    if !path.starts_with("/health/") && !authorized(&state, &req) {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": {"code": "UNAUTHORIZED", "message": "this server needs `Authorization: Bearer <token>` (serve --token-file)"}}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return Ok(r);
    }
    let t0 = std::time::Instant::now();
    let response = match (&method, path.as_str()) {
        (&Method::GET, "/health/live") => json(StatusCode::OK, &serde_json::json!({"status": "live"})),
        (&Method::GET, "/health/ready") => match blocking(&state, Plugin::ready).await {
            Ok(checks) => json(StatusCode::OK, &serde_json::json!({"status": "ready", "checks": checks})),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "unready", "error": e.to_envelope()["error"]}),
            ),
        },
        (&Method::GET, "/metrics") => {
            let gauges = blocking(&state, Plugin::state_metrics).await;
            let mut text = hfwasm::metrics::render();
            let store_up = match gauges {
                Ok(g) => {
                    text.push_str(&g);
                    1
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: the store did not answer");
                    0
                }
            };
            let family = hfwasm::metrics::family;
            family(&mut text, "hfwasm_store_up", "gauge", "Whether the store answered this scrape.");
            text.push_str(&format!("hfwasm_store_up {store_up}\n"));
            family(
                &mut text,
                "hfwasm_reconciler_leader",
                "gauge",
                "Whether this replica held the reconciler lease at its last pass.",
            );
            let leader = u8::from(LEADER.load(std::sync::atomic::Ordering::Relaxed));
            text.push_str(&format!("hfwasm_reconciler_leader {leader}\n"));
            family(
                &mut text,
                "hfwasm_reconciled_total",
                "counter",
                "Requests this replica's reconciler repaired.",
            );
            let repaired = RECONCILED.load(std::sync::atomic::Ordering::Relaxed);
            text.push_str(&format!("hfwasm_reconciled_total {repaired}\n"));
            respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (&Method::GET, "/openapi.json") => respond(StatusCode::OK, "application/json", OPENAPI),
        (&Method::GET, "/v1/machines") => {
            let all = query.split('&').any(|p| p == "all=true" || p == "all=1");
            match blocking(&state, move |p| p.machines(all)).await {
                Ok(lines) => json(StatusCode::OK, &serde_json::to_value(lines).unwrap_or_default()),
                Err(e) => error(&e),
            }
        }
        (&Method::GET, "/v1/requests") => match blocking(&state, Plugin::requests).await {
            Ok(lines) => json(StatusCode::OK, &serde_json::to_value(lines).unwrap_or_default()),
            Err(e) => error(&e),
        },
        // The templates on offer: getAvailableTemplates' answer, for a GET.
        (&Method::GET, "/v1/templates") => match blocking(&state, |p| p.run_input(Call::GetAvailableTemplates, b"{}")).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error(&e),
        },
        (&Method::POST, p) if p.starts_with("/v1/hostfactory/") => {
            let name = &p["/v1/hostfactory/".len()..];
            match Call::ALL.into_iter().find(|c| c.name() == name) {
                None => json(
                    StatusCode::NOT_FOUND,
                    &HfError::new(
                        ErrorCode::InvalidInput,
                        format!("no call '{name}'; the calls are {}", Call::ALL.map(|c| c.name()).join(", ")),
                    )
                    .to_envelope(),
                ),
                Some(call) => match Limited::new(
                    req.into_body(),
                    usize::try_from(hfwasm::limits::MAX_INPUT_BYTES).unwrap_or(usize::MAX),
                )
                .collect()
                .await
                {
                    Err(e) => error(&HfError::new(
                        ErrorCode::InvalidInput,
                        format!(
                            "request body: {e} (at most {} bytes, limits::MAX_INPUT_BYTES)",
                            hfwasm::limits::MAX_INPUT_BYTES
                        ),
                    )),
                    Ok(body) => {
                        let body = body.to_bytes();
                        match blocking(&state, move |p| p.run_input(call, &body)).await {
                            Ok(v) => json(StatusCode::OK, &v),
                            Err(e) => error(&e),
                        }
                    }
                },
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"code": "NOT_FOUND", "message": format!("no route {method} {path}; see /openapi.json")}}),
        ),
    };
    tracing::info!(%method, path, status = response.status().as_u16(), elapsed_us = t0.elapsed().as_micros() as u64, "http served");
    Ok(response)
}
