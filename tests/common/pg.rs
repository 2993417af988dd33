//! A real, throwaway PostgreSQL server for the store tests: `initdb` into a temp dir, a
//! free 127.0.0.1 port, password authentication (scram-sha-256), run as `nobody` when the
//! tests run as root (PostgreSQL refuses root). Stopped on drop.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Superuser the tests log in as.
pub const USER: &str = "hfwasm";
/// Its password.
pub const PASSWORD: &str = "s3cret-for-tests";

/// A running PostgreSQL server.
pub struct Postgres {
    child: Child,
    /// Loopback port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    /// For a TLS-only server: the CA file its certificate (for `localhost`) chains to.
    pub ca: Option<PathBuf>,
}

/// Runs openssl with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA and a server certificate for `localhost` (not for 127.0.0.1) signed by it:
/// `ca.crt`, `server.crt`, `server.key` in `dir`.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=hfwasm test CA"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("HFWASM_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): run ./dev/test.sh, which installs them, \
             or `apt-get install postgresql`, or set HFWASM_PG_BINDIR"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as `nobody` when we are root.
fn command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Initialises and starts a server; waits until it accepts logins.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that takes TCP connections over TLS only (its certificate names
    /// `localhost`, signed by the CA in [`Postgres::ca`]); plain TCP logins are refused.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = bindir();
        let dir = tempfile::Builder::new().prefix("hfwasm-pg-").tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("pwfile");
        if tls {
            make_certs(dir.path());
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path().join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("key mode");
        }
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "cannot chown {} to nobody", dir.path().display());
        }
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut tls_args: Vec<String> = Vec::new();
        if tls {
            // TCP over TLS only; the test's own admin client comes through the socket.
            let hba = data.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n",
            )
            .expect("pg_hba.conf");
            if is_root() {
                let _ = Command::new("chown").args(["65534:65534"]).arg(&hba).status();
            }
            for (k, f) in [("ssl_cert_file", "server.crt"), ("ssl_key_file", "server.key")] {
                tls_args.push("-c".into());
                tls_args.push(format!("{k}={}", dir.path().join(f).display()));
            }
            tls_args.extend(["-c".into(), "ssl=on".into()]);
        }
        let log = std::fs::File::create(std::env::temp_dir().join(format!("hfwasm-pg-{port}.log"))).expect("pg log");
        let child = command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=300", "-c", "log_min_messages=warning"])
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let ca = tls.then(|| dir.path().join("ca.crt"));
        let pg = Self { child, port, dir, ca };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && pg.client("postgres").is_ok() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "postgres did not start on port {port} within 60 s; see {}",
                std::env::temp_dir().join(format!("hfwasm-pg-{port}.log")).display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The directory of the server's Unix socket (a `host` that is a path).
    pub fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// A client logged in to database `db`.
    pub fn client(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        let mut c = postgres::Config::new();
        if self.ca.is_some() {
            c.host_path(self.dir.path());
        } else {
            c.host("127.0.0.1");
        }
        c.port(self.port).user(USER).password(PASSWORD).dbname(db).connect(postgres::NoTls)
    }

    /// Creates an empty database `name` (dropping an old one of that name).
    pub fn create_database(&self, name: &str) {
        let mut c = self.client("postgres").expect("connect");
        c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .and_then(|_| c.batch_execute(&format!("CREATE DATABASE \"{name}\"")))
            .expect("create database");
    }

    /// The `storage` section of `hfwasm.json` for database `name` on this server.
    pub fn storage_config(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "strategy": "sql",
            "sql_strategy": {
                "type": "postgresql",
                "host": "127.0.0.1",
                "port": self.port,
                "name": name,
                "user": USER,
                "password": PASSWORD,
                "pool_size": 2
            }
        })
    }

    /// Library-level settings for database `db` on this server.
    pub fn settings(&self, db: &str) -> hfwasm::store::PgSettings {
        hfwasm::store::PgSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            user: USER.into(),
            password: Some(PASSWORD.into()),
            dbname: db.into(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            ssl_mode: hfwasm::store::SslMode::Disable,
            ssl_root_cert: None,
            sources: Default::default(),
        }
    }

    /// Where the server's own files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's "fast" shutdown; the child runs as nobody, so ask `kill`
        // (we may be root) rather than Child::kill's SIGKILL, which leaves shared memory.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
