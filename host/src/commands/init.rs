//! `hfwasm init`: installs hfwasm into a HostFactory tree the way IBM's plugins are
//! installed: the plugin (scripts and binary) under `$HF_TOP/$HF_VERSION/providerplugins/`,
//! its entry in `hostProviderPlugins.json`, a provider instance in `hostProviders.json`,
//! that instance in a requestor's `providers` in `hostRequestors.json`, and the instance's
//! conf, work and log dirs with starter files. Other entries are kept as they are, a file is
//! backed up before it changes, nothing that exists is overwritten, and a second run changes
//! nothing. Run as root, it leaves what it writes owned by the HostFactory user (the owner of
//! the conf dir unless --owner says).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::print_failure;
use super::templates::{self, Discovery};
use hfwasm::hf::registration::{self, Change, InstancePaths};

/// The five scripts and the helper they source, as shipped in `scripts/`.
const SCRIPTS: [(&str, &str); 6] = [
    (
        "getAvailableTemplates.sh",
        include_str!("../../../scripts/getAvailableTemplates.sh"),
    ),
    ("requestMachines.sh", include_str!("../../../scripts/requestMachines.sh")),
    (
        "requestReturnMachines.sh",
        include_str!("../../../scripts/requestReturnMachines.sh"),
    ),
    ("getRequestStatus.sh", include_str!("../../../scripts/getRequestStatus.sh")),
    ("getReturnRequests.sh", include_str!("../../../scripts/getReturnRequests.sh")),
    ("hfwasm-invoke.sh", include_str!("../../../scripts/hfwasm-invoke.sh")),
];

/// The starter inventory of an on-prem instance: the format, no hosts.
const STARTER_INVENTORY: &str = "\
# hfwasm on-prem pool: one host per line.
#   <name> <ip> template=<template id> [ncpus=N] [nram=MiB] [power_on=\"cmd\"] [power_off=\"cmd\"]
# Hosts with the same template form one template HostFactory can request. Example:
#   compute-01 10.0.0.11 template=pool-4cpu ncpus=4 nram=16384
# Check with: hfwasm config check --confdir <this dir>
";

/// Which provider the new instance serves.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProviderKind {
    /// The built-in on-prem pool (hosts listed in inventory.txt).
    Onprem,
    /// The built-in AWS guest on IBM's awsprov files (templates from the account).
    Aws,
}

/// `hfwasm init` arguments.
#[derive(Args)]
pub struct InitArgs {
    /// HostFactory's top dir (HF_TOP), e.g. /opt/ibm/spectrumcomputing/hostfactory.
    #[arg(long, value_name = "DIR")]
    pub hf_top: Option<PathBuf>,
    /// HostFactory's version dir under HF_TOP (HF_VERSION, e.g. 1.2); found when there is one.
    #[arg(long, value_name = "VERSION")]
    pub hf_version: Option<String>,
    /// HostFactory's conf dir (HF_CONFDIR; default HF_TOP/conf).
    #[arg(long, value_name = "DIR")]
    pub hf_confdir: Option<PathBuf>,
    /// HostFactory's work dir (HF_WORKDIR; default HF_TOP/work).
    #[arg(long, value_name = "DIR")]
    pub hf_workdir: Option<PathBuf>,
    /// HostFactory's log dir (HF_LOGDIR; default HF_TOP/log).
    #[arg(long, value_name = "DIR")]
    pub hf_logdir: Option<PathBuf>,
    /// Plugin name in hostProviderPlugins.json.
    #[arg(long, default_value = "hfwasm")]
    pub plugin: String,
    /// Provider instance name in hostProviders.json.
    #[arg(long, default_value = "hfwasminst")]
    pub instance: String,
    /// Provider the instance serves.
    #[arg(long, value_enum, default_value = "onprem")]
    pub provider: ProviderKind,
    /// Requestor to give the instance to (default: symAinst, else the first enabled POLL one).
    #[arg(long, value_name = "NAME", conflicts_with = "no_requestor")]
    pub requestor: Option<String>,
    /// Leave hostRequestors.json alone.
    #[arg(long)]
    pub no_requestor: bool,
    /// Owner (USER or USER:GROUP) of what is written when run as root (default: the owner
    /// of the conf dir, i.e. the HostFactory user).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub owner: Option<String>,
    /// The binary to install (default: this one).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
    /// Say what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Ask nothing: take the flags, the environment and the defaults.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// For --provider aws: the account and what the starter templates hold.
    #[command(flatten)]
    pub discovery: Discovery,
}

/// One step's outcome, for the report.
struct Step {
    what: String,
    outcome: String,
}

/// Where things go, resolved from flags, environment, prompts and defaults.
struct Layout {
    top: PathBuf,
    version: String,
    conf: PathBuf,
    work: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn plugin_dir(&self, plugin: &str) -> PathBuf {
        self.top.join(&self.version).join("providerplugins").join(plugin)
    }
}

/// Asks `question` on the terminal with `default`; the answer, or the default on an empty
/// line.
fn ask(question: &str, default: &str) -> String {
    // One write: the terminal's echo of typed-ahead answers cannot split the prompt.
    let _ = std::io::stderr().write_all(format!("{question} [{default}]: ").as_bytes());
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    match line.trim() {
        "" => default.to_string(),
        s => s.to_string(),
    }
}

/// The version dir under `top`: the one entry named like a version (`1.2`) that holds
/// `providerplugins/` (`conf/` holds one too: the registration file's).
fn find_version(top: &Path) -> Result<String, String> {
    let found: Vec<String> = std::fs::read_dir(top)
        .map_err(|e| format!("cannot read HF_TOP {}: {e}", top.display()))?
        .flatten()
        .filter(|e| e.path().join("providerplugins").is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no <version>/providerplugins/ under {}; give --hf-version", top.display())),
        many => Err(format!(
            "several versions under {} ({}); give --hf-version",
            top.display(),
            many.join(", ")
        )),
    }
}

fn layout(a: &InitArgs, interactive: bool) -> Result<Layout, String> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let top = match a.hf_top.clone().or_else(|| env("HF_TOP")) {
        Some(t) => t,
        None if interactive => PathBuf::from(ask("HostFactory top dir (HF_TOP)", "/opt/ibm/spectrumcomputing/hostfactory")),
        None => return Err("no HostFactory tree: give --hf-top (or set HF_TOP)".into()),
    };
    if !top.is_dir() {
        return Err(format!("HF_TOP {} is not a directory", top.display()));
    }
    let version = match a
        .hf_version
        .clone()
        .or_else(|| std::env::var("HF_VERSION").ok().filter(|v| !v.is_empty()))
    {
        Some(v) => v,
        None => find_version(&top)?,
    };
    Ok(Layout {
        conf: a
            .hf_confdir
            .clone()
            .or_else(|| env("HF_CONFDIR"))
            .unwrap_or_else(|| top.join("conf")),
        work: a
            .hf_workdir
            .clone()
            .or_else(|| env("HF_WORKDIR"))
            .unwrap_or_else(|| top.join("work")),
        log: a.hf_logdir.clone().or_else(|| env("HF_LOGDIR")).unwrap_or_else(|| top.join("log")),
        top,
        version,
    })
}

/// uid and gid of `spec` (`user` or `user:group`).
fn lookup_owner(spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let cuser = std::ffi::CString::new(user).map_err(|_| format!("bad user name `{user}`"))?;
    // SAFETY: getpwnam reads a NUL-terminated name; the record is copied out at once.
    let pw = unsafe { libc::getpwnam(cuser.as_ptr()) };
    if pw.is_null() {
        return Err(format!("no user `{user}` (--owner)"));
    }
    // SAFETY: pw is non-null and points at libc's static record.
    let (uid, mut gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    if let Some(g) = group {
        let cgroup = std::ffi::CString::new(g).map_err(|_| format!("bad group name `{g}`"))?;
        // SAFETY: as above, for the group record.
        let gr = unsafe { libc::getgrnam(cgroup.as_ptr()) };
        if gr.is_null() {
            return Err(format!("no group `{g}` (--owner)"));
        }
        // SAFETY: gr is non-null.
        gid = unsafe { (*gr).gr_gid };
    }
    Ok((uid, gid))
}

/// Writes files and dirs, remembers what it wrote (to hand to the owner at the end), and
/// says what it did or, on a dry run, would do.
struct Writer {
    dry_run: bool,
    written: Vec<PathBuf>,
    steps: Vec<Step>,
}

impl Writer {
    fn step(&mut self, what: impl Into<String>, outcome: impl Into<String>) {
        self.steps.push(Step {
            what: what.into(),
            outcome: outcome.into(),
        });
    }

    /// Creates `dir` and its missing parents.
    fn dir(&mut self, dir: &Path) -> Result<(), String> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.exists()) {
            missing.push(p.to_path_buf());
            d = p.parent();
        }
        if !self.dry_run {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            for m in &missing {
                let _ = std::fs::set_permissions(m, std::fs::Permissions::from_mode(0o755));
            }
        }
        self.step(dir.display().to_string(), "created");
        self.written.extend(missing);
        Ok(())
    }

    /// Writes `content` to `path` with `mode` unless it already holds exactly that; an
    /// existing different file is replaced only when `replace` (else kept, said so).
    fn file(&mut self, path: &Path, content: &[u8], mode: u32, replace: bool) -> Result<(), String> {
        let old = std::fs::read(path).ok();
        let outcome = match &old {
            Some(o) if o == content => "unchanged",
            Some(_) if !replace => "kept (exists)",
            Some(_) => "updated",
            None => "created",
        };
        if matches!(outcome, "updated" | "created") {
            if let Some(parent) = path.parent() {
                self.dir(parent)?;
            }
            if !self.dry_run {
                write_atomically(path, content, mode)?;
            }
            self.written.push(path.to_path_buf());
        }
        self.step(path.display().to_string(), outcome);
        Ok(())
    }

    /// Merges hfwasm's entry into registration file `path` with `merge`; backs the file up
    /// first when it changes, keeps its mode and indentation.
    fn registration(
        &mut self,
        path: &Path,
        merge: impl FnOnce(&mut Value) -> Result<Change, registration::RegistrationError>,
    ) -> Result<(), String> {
        let old = match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut doc: Value = match &old {
            Some(t) => serde_json::from_str(t).map_err(|e| format!("{}: not JSON: {e}", path.display()))?,
            None => serde_json::json!({}),
        };
        let change = merge(&mut doc).map_err(|e| e.to_string())?;
        if change == Change::Unchanged {
            self.step(path.display().to_string(), "unchanged");
            return Ok(());
        }
        let text = registration::render(&doc, old.as_deref());
        if !self.dry_run {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
            if old.is_some() {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let backup = path.with_file_name(format!(
                    "{}.hfwasm-backup-{stamp}",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("registration.json")
                ));
                std::fs::copy(path, &backup).map_err(|e| format!("cannot back up {} to {}: {e}", path.display(), backup.display()))?;
                self.step(backup.display().to_string(), "backup");
                self.written.push(backup);
            } else if let Some(parent) = path.parent() {
                self.dir(parent)?;
            }
            write_atomically(path, text.as_bytes(), mode)?;
        }
        self.written.push(path.to_path_buf());
        self.step(path.display().to_string(), change.as_str());
        Ok(())
    }
}

/// `content` into `path` through a temp file and a rename: HostFactory never reads half a
/// registration file.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_file_name(format!(
        ".{}.hfwasm-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, content)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}

/// Runs `hfwasm init`.
pub fn run(a: &InitArgs) -> ExitCode {
    hfwasm::logging::init("warn", None, "init");
    let interactive = !a.yes && std::io::stdin().is_terminal();
    match install(a, interactive) {
        Ok(w) => {
            let width = w.steps.iter().map(|s| s.outcome.len()).max().unwrap_or(0);
            for s in &w.steps {
                println!("{:width$}  {}", s.outcome, s.what);
            }
            if a.dry_run {
                println!("(dry run: nothing was changed)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => print_failure(e),
    }
}

fn install(a: &InitArgs, interactive: bool) -> Result<Writer, String> {
    let l = layout(a, interactive)?;
    let mut instance = a.instance.clone();
    let mut provider = a.provider;
    if interactive {
        instance = ask("Provider instance name", &instance);
        let kind = ask(
            "Provider (onprem or aws)",
            if provider == ProviderKind::Aws { "aws" } else { "onprem" },
        );
        provider = match kind.as_str() {
            "aws" => ProviderKind::Aws,
            "onprem" => ProviderKind::Onprem,
            other => return Err(format!("`{other}` is not a provider; onprem or aws")),
        };
    }
    for (what, name) in [("--plugin", &a.plugin), ("--instance", &instance)] {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
            return Err(format!("{what} `{name}`: use letters, digits, `_`, `-` or `.`"));
        }
    }
    if !l.conf.is_dir() {
        return Err(format!("HF_CONFDIR {} is not a directory; give --hf-confdir", l.conf.display()));
    }
    // Whose files these are: decided before anything is written.
    // SAFETY: geteuid only reads the process's effective uid.
    let is_root = unsafe { libc::geteuid() } == 0;
    let owner = match (&a.owner, is_root) {
        (Some(spec), _) => Some(lookup_owner(spec)?),
        (None, true) => {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&l.conf).map_err(|e| format!("{}: {e}", l.conf.display()))?;
            Some((m.uid(), m.gid()))
        }
        (None, false) => None,
    };
    let mut w = Writer {
        dry_run: a.dry_run,
        written: Vec::new(),
        steps: Vec::new(),
    };

    // The plugin: scripts and binary.
    let plugin_dir = l.plugin_dir(&a.plugin);
    for (name, text) in SCRIPTS {
        w.file(&plugin_dir.join("scripts").join(name), text.as_bytes(), 0o755, true)?;
    }
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}; give --binary"))?,
    };
    let bytes = std::fs::read(&binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    w.file(&plugin_dir.join("bin").join("hfwasm"), &bytes, 0o755, true)?;

    // Registration.
    let scripts = format!("${{HF_TOP}}/${{HF_VERSION}}/providerplugins/{}/scripts/", a.plugin);
    w.registration(&l.conf.join(registration::PLUGINS_FILE), |d| {
        registration::register_plugin(d, &a.plugin, &scripts)
    })?;
    let paths = InstancePaths::standard(&instance);
    w.registration(&l.conf.join(registration::PROVIDERS_FILE), |d| {
        registration::register_instance(d, &instance, &a.plugin, &paths)
    })?;
    if !a.no_requestor {
        let file = l.conf.join(registration::REQUESTORS_FILE);
        let current: Option<Value> = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok());
        match (a.requestor.clone(), current.as_ref().and_then(registration::default_requestor)) {
            (Some(r), _) | (None, Some(r)) => {
                let r = if interactive && a.requestor.is_none() {
                    ask("Requestor to use this instance", &r)
                } else {
                    r
                };
                w.registration(&file, |d| registration::attach_to_requestor(d, &r, &instance))?;
            }
            (None, None) => w.step(
                file.display().to_string(),
                format!("skipped (no requestor found: add `{instance}` to a requestor's providers, or give --requestor)"),
            ),
        }
    }

    // The instance's dirs and starter files; nothing that exists is replaced.
    let conf = l.conf.join("providers").join(&instance);
    w.dir(&conf)?;
    w.dir(&l.work.join("providers").join(&instance))?;
    w.dir(&l.log)?;
    match provider {
        ProviderKind::Onprem => w.file(&conf.join("inventory.txt"), STARTER_INVENTORY.as_bytes(), 0o644, false)?,
        ProviderKind::Aws => aws_files(a, &mut w, &conf, &instance)?,
    }

    if let Some((uid, gid)) = owner
        && !a.dry_run
    {
        for p in &w.written {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| format!("bad path {}", p.display()))?;
            // SAFETY: chown on a NUL-terminated path we just wrote.
            if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
                return Err(format!(
                    "cannot hand {} to uid {uid}: {}",
                    p.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        w.step(format!("{} path(s)", w.written.len()), format!("owned by {uid}:{gid}"));
    }
    w.step(
        format!(
            "hfwasm config check --confdir {} --workdir {}",
            conf.display(),
            l.work.join("providers").join(&instance).display()
        ),
        "next",
    );
    Ok(w)
}

/// IBM's AWS files for the instance: the config (region, endpoint) and starter templates
/// from the account, each only when absent.
fn aws_files(a: &InitArgs, w: &mut Writer, conf: &Path, instance: &str) -> Result<(), String> {
    let config_file = conf.join(format!("{instance}prov_config.json"));
    let templates_file = conf.join(format!("{instance}prov_templates.json"));
    if !config_file.exists() {
        let settings = templates::settings(&a.discovery, None)?;
        let mut cfg = serde_json::Map::new();
        cfg.insert("AWS_REGION".into(), Value::String(settings.region.clone()));
        if let Some(u) = &settings.endpoint_url {
            cfg.insert("AWS_ENDPOINT_URL".into(), Value::String(u.clone()));
        }
        let text = registration::render(&Value::Object(cfg), None);
        w.file(&config_file, text.as_bytes(), 0o644, false)?;
    } else {
        w.step(config_file.display().to_string(), "kept (exists)");
    }
    if templates_file.exists() {
        w.step(templates_file.display().to_string(), "kept (exists)");
        return Ok(());
    }
    let settings = if config_file.exists() {
        templates::settings(&a.discovery, Some(&config_file))?
    } else {
        templates::settings(&a.discovery, None)?
    };
    match templates::generate(&a.discovery, settings) {
        Ok((doc, net)) => {
            w.step(templates::summary(&net), "found");
            w.file(&templates_file, registration::render(&doc, None).as_bytes(), 0o644, false)
        }
        Err(e) => {
            w.step(
                templates_file.display().to_string(),
                format!(
                    "not written: {e}; run `hfwasm templates generate --confdir {} --out {}` once the account is reachable",
                    conf.display(),
                    templates_file.display()
                ),
            );
            Ok(())
        }
    }
}
