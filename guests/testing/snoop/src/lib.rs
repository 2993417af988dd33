//! Adversarial guest: `templates` looks for everything a sandbox must hide (environment
//! variables, files, sockets, the host's credentials) and reports what it found in its
//! template's extra keys, so the test can assert it found nothing. It also reports the
//! wall clock it reads, which must be the call's time, not the machine's, and a number drawn
//! from its random source, which a seed in config makes the same on every run.

use std::io::Read;

fn attempt<T, E: std::fmt::Display>(r: Result<T, E>, what: impl Fn(T) -> String) -> String {
    match r {
        Ok(v) => format!("OPEN: {}", what(v)),
        Err(e) => format!("refused: {e}"),
    }
}

hfwasm_testing_common::adversarial_guest!(Snoop, |ctx| {
    let settings: serde_json::Value = serde_json::from_str(&ctx.settings_json).unwrap_or_default();
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let files: Vec<String> = ["/", ".", "/etc/passwd", "/proc/self/environ"]
        .iter()
        .chain(
            settings
                .get("paths")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|p| {
            let read = std::fs::File::open(p).and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).map(|_| s)
            });
            format!("{p}: {}", attempt(read, |s| format!("{} bytes", s.len())))
        })
        .collect();
    let dirs = attempt(std::fs::read_dir("/"), |d| format!("{} entries", d.count()));
    let cwd = attempt(std::env::current_dir(), |d| d.display().to_string());
    let tcp: Vec<String> = settings
        .get("connect")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .map(|a| format!("{a}: {}", attempt(std::net::TcpStream::connect(a), |_| "connected".to_string())))
        .collect();
    let resolve = attempt(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)), |a| {
        format!("{} addresses", a.count())
    });
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Drawn from WASI random (std seeds its hash keys there): fresh each run, unless config
    // seeds the guest's random source (`limits.random_seed`).
    let random = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(7);
        h.finish()
    };
    let extra = serde_json::json!({"env": env, "files": files, "dirs": dirs, "cwd": cwd, "tcp": tcp, "resolve": resolve, "clock": clock, "now": ctx.now, "random": random.to_string()});
    Ok(vec![hfwasm_testing_common::template("snoop", Some(extra.to_string()))])
});
