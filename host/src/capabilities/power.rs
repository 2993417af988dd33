//! `power` capability: runs the admin's power-on/power-off command for an inventory host
//! in the background and reports its outcome on later calls. The guest names a host and an
//! action; the command text comes only from the admin's inventory, so a guest cannot run
//! anything else.
//!
//! Outcomes live in the state store (kv namespace [`namespace`]), so they outlive the process
//! that started the command (every HostFactory call is a new process) and are seen by every
//! hfwasm installation sharing the store: a second host polling a request never starts a
//! command again that the first one started. The command runs under a detached
//! `hfwasm power-run` process, which records the outcome when the command ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::capabilities::inventory::Inventory;
use crate::engine::bindings::hostfactory::capabilities::power::{self as wit, Action, CommandState, Host, PowerError};
use crate::store::{StateStore, StoreError};

/// The power capability's row of [`super::TABLE`].
pub const UNIT: super::Unit = super::Unit {
    name: "power",
    wit: super::Wit::Own,
    about: "the admin's power commands of inventory hosts, run by the host",
    check_settings: None,
    link: |l| wit::add_to_linker::<_, wasmtime::component::HasSelf<GuestPower>>(l, |s| s.slot::<GuestPower>()),
    build: |l| {
        let runner = l.lent.get::<PowerRunner>().cloned().ok_or("the host lent no power runner")?;
        Ok(Box::new(GuestPower::new(
            l.lent.get::<Arc<Inventory>>().cloned(),
            l.store.clone(),
            namespace(l.owner),
            runner,
        )))
    },
};

/// Bytes of command output kept in a failure message.
const OUTPUT_TAIL: usize = 400;

/// The kv namespace of provider instance `instance`'s power outcomes (no guest can name it:
/// guest namespaces are `<instance>/<guest>`).
pub fn namespace(instance: &str) -> String {
    crate::store::namespaces::power(instance)
}

fn key(host: &str, act: Action) -> String {
    format!("{host}.{}", action_name(act))
}

/// What the store holds of one host's latest command for one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PowerOutcome {
    /// Started at `started_at` (epoch seconds) and not finished yet.
    Running {
        /// When the command was started.
        started_at: u64,
    },
    /// Exited with `exit` (0 = success); `output` is the tail of what it printed.
    Finished {
        /// Exit status; -1 when it was killed by a signal.
        exit: i32,
        /// Tail of stdout and stderr.
        output: String,
    },
}

impl PowerOutcome {
    fn command_state(&self) -> CommandState {
        match self {
            PowerOutcome::Running { .. } => CommandState::Running,
            PowerOutcome::Finished { exit: 0, .. } => CommandState::Succeeded,
            PowerOutcome::Finished { exit, output } => CommandState::Failed(format!("exit status {exit}: {output}")),
        }
    }
}

/// How a detached `hfwasm power-run` is started: this binary with the call's directories.
#[derive(Debug, Clone)]
pub struct PowerRunner {
    /// The hfwasm executable.
    pub exe: PathBuf,
    /// Arguments placed before `power-run` (`--confdir`, `--workdir`, `--logdir`).
    pub dir_args: Vec<std::ffi::OsString>,
    /// Where command output is written (`<workdir>/power`), for the admin to read.
    pub log_dir: PathBuf,
    /// Provider instance name, passed on as `HF_PROVIDER_NAME`.
    pub instance: String,
}

/// Per-guest state of the power capability.
pub struct GuestPower {
    inventory: Option<Arc<Inventory>>,
    store: Arc<dyn StateStore>,
    namespace: String,
    runner: PowerRunner,
}

/// The opposite action.
fn other(a: Action) -> Action {
    match a {
        Action::On => Action::Off,
        Action::Off => Action::On,
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::On => "on",
        Action::Off => "off",
    }
}

/// Parses `on` / `off`.
pub fn parse_action(s: &str) -> Option<Action> {
    match s {
        "on" => Some(Action::On),
        "off" => Some(Action::Off),
        _ => None,
    }
}

/// The command the admin configured for `host` and `act`, if any.
pub fn command_for(inventory: Option<&Inventory>, host: &str, act: Action) -> Result<Option<String>, PowerError> {
    let inv = inventory.ok_or_else(|| PowerError::Denied("no inventory is configured for this guest".into()))?;
    let h = inv
        .host(host)
        .ok_or_else(|| PowerError::Denied(format!("host `{host}` is not in the inventory {}", inv.file.display())))?;
    Ok(match act {
        Action::On => h.power_on.clone(),
        Action::Off => h.power_off.clone(),
    })
}

/// Reads the recorded outcome of `host`'s latest `act` command.
pub fn read_outcome(store: &dyn StateStore, namespace: &str, host: &str, act: Action) -> Result<Option<PowerOutcome>, StoreError> {
    Ok(store
        .kv_get(namespace, &key(host, act))?
        .and_then(|v| serde_json::from_str(&v).ok()))
}

/// Records the outcome of `host`'s latest `act` command.
pub fn record_outcome(store: &dyn StateStore, namespace: &str, host: &str, act: Action, outcome: &PowerOutcome) -> Result<(), StoreError> {
    let text = serde_json::to_string(outcome).unwrap_or_default();
    store.kv_set(namespace, &key(host, act), &text)
}

/// kv key of the claim on `host`: at most one power command per host runs at a time
/// (value `<action>:<started_at>:<nonce>`).
fn claim_key(host: &str) -> String {
    format!("claim/{host}")
}

/// Takes the claim on `host` for `act`: the claim's token when this caller now holds it;
/// None when a command for the host is already running (started less than
/// [`limits::POWER_RUN_LOST_AFTER`](crate::limits::POWER_RUN_LOST_AFTER) ago).
/// An older claim is a `power-run` that died without releasing it, and is taken over.
fn claim(store: &dyn StateStore, namespace: &str, host: &str, act: Action, now: u64) -> Result<Option<String>, StoreError> {
    let key = claim_key(host);
    let mine = format!("{}:{now}:{}", action_name(act), uuid::Uuid::new_v4().simple());
    if store.kv_insert_if_absent(namespace, &key, &mine)? {
        return Ok(Some(mine));
    }
    let Some(held) = store.kv_get(namespace, &key)? else {
        // Released between the two reads: try once more.
        return Ok(store.kv_insert_if_absent(namespace, &key, &mine)?.then_some(mine));
    };
    if now.saturating_sub(claim_time(&held)) < crate::limits::POWER_RUN_LOST_AFTER.as_secs() {
        return Ok(None);
    }
    tracing::warn!(host, claim = %held, "taking over a power claim whose command never reported back");
    Ok((store.kv_delete_if_equals(namespace, &key, &held)? && store.kv_insert_if_absent(namespace, &key, &mine)?).then_some(mine))
}

/// When claim `value` was taken (epoch seconds; 0 when unreadable).
fn claim_time(value: &str) -> u64 {
    value.split(':').nth(1).and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// Releases `host`'s claim if it is held for `act`.
fn release(store: &dyn StateStore, namespace: &str, host: &str, act: Action) -> Result<(), StoreError> {
    let key = claim_key(host);
    if let Some(held) = store.kv_get(namespace, &key)?
        && held.starts_with(&format!("{}:", action_name(act)))
    {
        store.kv_delete_if_equals(namespace, &key, &held)?;
    }
    Ok(())
}

/// Runs `command` in `/bin/sh`, its output to `log`, for at most `limit`; returns the
/// outcome. A command still running at `limit` is killed with its whole process group (what
/// it started too) and reported failed, so a hung command frees its host in bounded time.
pub fn run_command(command: &str, log: &Path, limit: std::time::Duration) -> PowerOutcome {
    use std::os::unix::process::CommandExt;
    let out = {
        use std::os::unix::fs::OpenOptionsExt;
        // 0600 and never through a symbolic link: the output may hold what the command printed.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(log)
            .and_then(|f| Ok((f.try_clone()?, f)))
    };
    let child = match out {
        Ok((o, e)) => Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            // Its own process group, so a timeout kills everything it started.
            .process_group(0)
            .spawn(),
        Err(e) => Err(e),
    };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return PowerOutcome::Finished {
                exit: -1,
                output: format!("cannot run /bin/sh (output to {}): {e}", log.display()),
            };
        }
    };
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if started.elapsed() >= limit => {
                let group = i32::try_from(child.id()).unwrap_or(0);
                if group > 0 {
                    // SAFETY: killpg only sends a signal to the group this process created.
                    unsafe { libc::killpg(group, libc::SIGKILL) };
                }
                let _ = child.wait();
                return PowerOutcome::Finished {
                    exit: -1,
                    output: format!("killed after {} s (limits::POWER_COMMAND_TIMEOUT): {}", limit.as_secs(), tail(log)),
                };
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => break Err(e),
        }
    };
    match status {
        Ok(st) => PowerOutcome::Finished {
            exit: st.code().unwrap_or(-1),
            output: tail(log),
        },
        Err(e) => PowerOutcome::Finished {
            exit: -1,
            output: format!("cannot wait for /bin/sh (output to {}): {e}", log.display()),
        },
    }
}

/// The body of `hfwasm power-run`: runs `host`'s configured `act` command and records its
/// outcome. The command is looked up again here, from the admin's inventory.
/// With `claim` (the token `start` took), the command runs only while that claim is still
/// held: a `power-run` that started so late that its claim was given up runs nothing.
pub fn run_and_record(
    store: &dyn StateStore,
    namespace: &str,
    inventory: Option<&Inventory>,
    log_dir: &Path,
    host: &str,
    act: Action,
    claim: Option<&str>,
) -> Result<PowerOutcome, String> {
    if let Some(token) = claim {
        let held = store
            .kv_get(namespace, &claim_key(host))
            .map_err(|e| format!("cannot read the host's power claim: {e}"))?;
        if held.as_deref() != Some(token) {
            return Err(format!(
                "the claim on `{host}` was given up before this power-run started; nothing run"
            ));
        }
        let running = PowerOutcome::Running {
            started_at: crate::clock::now_secs(),
        };
        record_outcome(store, namespace, host, act, &running).map_err(|e| format!("cannot record the start: {e}"))?;
    }
    let outcome = match command_for(inventory, host, act) {
        Ok(Some(cmd)) => {
            std::fs::create_dir_all(log_dir).map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
            let outcome = run_command(
                &cmd,
                &log_dir.join(format!("{}.log", key(host, act))),
                crate::limits::POWER_COMMAND_TIMEOUT,
            );
            // The command is not logged: inventories carry credentials in commands.
            tracing::info!(
                host,
                action = action_name(act),
                exit = match &outcome {
                    PowerOutcome::Finished { exit, .. } => *exit,
                    PowerOutcome::Running { .. } => 0,
                },
                "power command finished"
            );
            outcome
        }
        Ok(None) => PowerOutcome::Finished {
            exit: -1,
            output: format!("host `{host}` has no power_{} command in the inventory", action_name(act)),
        },
        Err(PowerError::Denied(m) | PowerError::SpawnFailed(m)) => PowerOutcome::Finished { exit: -1, output: m },
    };
    record_outcome(store, namespace, host, act, &outcome).map_err(|e| format!("cannot record the outcome: {e}"))?;
    match claim {
        Some(token) => store.kv_delete_if_equals(namespace, &claim_key(host), token).map(drop),
        None => release(store, namespace, host, act),
    }
    .map_err(|e| format!("cannot release the host's power claim: {e}"))?;
    Ok(outcome)
}

impl GuestPower {
    /// The state of a command with no recorded outcome: starting while a fresh claim for it
    /// exists (its power-run has not recorded the start yet); a claim older than
    /// [`limits::POWER_RUN_START_GRACE`](crate::limits::POWER_RUN_START_GRACE)
    /// with nothing recorded is a start whose call was killed before power-run ran, and is
    /// given up, so the guest starts the command again.
    fn unreported(&self, host: &str, act: Action) -> CommandState {
        let key = claim_key(host);
        match self.store.kv_get(&self.namespace, &key) {
            Ok(Some(held)) if held.starts_with(&format!("{}:", action_name(act))) => {
                let age = crate::clock::now_secs().saturating_sub(claim_time(&held));
                if age < crate::limits::POWER_RUN_START_GRACE.as_secs() {
                    return CommandState::Running;
                }
                tracing::warn!(
                    host,
                    action = action_name(act),
                    age,
                    "a power command was claimed but never started; giving up the claim"
                );
                if let Err(e) = self.store.kv_delete_if_equals(&self.namespace, &key, &held) {
                    tracing::warn!(host, error = %e, "cannot give up a power claim");
                    return CommandState::Running;
                }
                CommandState::NotStarted
            }
            Ok(_) => CommandState::NotStarted,
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot read a power claim from the store");
                CommandState::Running
            }
        }
    }

    /// Commands from `inventory`; outcomes in `store` under `namespace`; commands run by `runner`.
    pub fn new(inventory: Option<Arc<Inventory>>, store: Arc<dyn StateStore>, namespace: String, runner: PowerRunner) -> Self {
        Self {
            inventory,
            store,
            namespace,
            runner,
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let text = text.trim();
    let mut start = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if text.is_empty() {
        "(no output)".to_string()
    } else {
        text[start..].to_string()
    }
}

impl Host for GuestPower {
    fn start(&mut self, host: String, act: Action) -> Result<CommandState, PowerError> {
        if command_for(self.inventory.as_deref(), &host, act)?.is_none() {
            return Ok(CommandState::NotConfigured);
        }
        let spawn_err = |what: &str, e: &dyn std::fmt::Display| PowerError::SpawnFailed(format!("{what}: {e}"));
        // One command per host at a time, across every process and installation sharing the
        // store: a second start while one runs reports the running one and spawns nothing.
        let now = crate::clock::now_secs();
        let Some(token) = claim(self.store.as_ref(), &self.namespace, &host, act, now)
            .map_err(|e| spawn_err("cannot claim the host in the store", &e))?
        else {
            let held = self
                .store
                .kv_get(&self.namespace, &claim_key(&host))
                .ok()
                .flatten()
                .unwrap_or_default();
            if !held.starts_with(&format!("{}:", action_name(act))) {
                // The other action's command runs: this one has not started, and an earlier
                // outcome of it must not be read as this one's. The guest asks again.
                self.store
                    .kv_delete(&self.namespace, &key(&host, act))
                    .map_err(|e| spawn_err("cannot clear the earlier outcome", &e))?;
            }
            return Ok(CommandState::Running);
        };
        // Earlier outcomes belong to earlier transitions: once this command starts, neither
        // may be read as current (a power-on after a power-off is a new command, not the one
        // that succeeded last cycle). power-run records `running` when it starts; until then
        // the claim says so (see `state`).
        for a in [act, other(act)] {
            self.store
                .kv_delete(&self.namespace, &key(&host, a))
                .map_err(|e| spawn_err("cannot clear an earlier outcome", &e))?;
        }
        let mut child = Command::new(&self.runner.exe);
        child
            .args(&self.runner.dir_args)
            .arg("power-run")
            .arg("--host")
            .arg(&host)
            .arg("--action")
            .arg(action_name(act))
            .arg("--claim")
            .arg(&token)
            .env("HF_PROVIDER_NAME", &self.runner.instance);
        child.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        #[cfg(unix)]
        {
            // Own process group: the command outlives this HostFactory call.
            use std::os::unix::process::CommandExt;
            child.process_group(0);
        }
        if let Err(e) = child.spawn() {
            let outcome = PowerOutcome::Finished {
                exit: -1,
                output: format!("cannot run {}: {e}", self.runner.exe.display()),
            };
            let _ = record_outcome(self.store.as_ref(), &self.namespace, &host, act, &outcome);
            let _ = self.store.kv_delete_if_equals(&self.namespace, &claim_key(&host), &token);
            return Err(spawn_err(&format!("cannot run {} power-run", self.runner.exe.display()), &e));
        }
        tracing::info!(host, action = action_name(act), "power command started");
        Ok(CommandState::Running)
    }

    fn state(&mut self, host: String, act: Action) -> CommandState {
        match command_for(self.inventory.as_deref(), &host, act) {
            Ok(Some(_)) => match read_outcome(self.store.as_ref(), &self.namespace, &host, act) {
                Ok(Some(PowerOutcome::Running { started_at }))
                    if crate::clock::now_secs().saturating_sub(started_at) >= crate::limits::POWER_RUN_LOST_AFTER.as_secs() =>
                {
                    // Its power-run died before recording the outcome: start it again.
                    tracing::warn!(
                        host,
                        action = action_name(act),
                        started_at,
                        "a power command never reported back; it counts as not started"
                    );
                    CommandState::NotStarted
                }
                Ok(Some(o)) => o.command_state(),
                Ok(None) => self.unreported(&host, act),
                // Unknown for now: the guest keeps the machine waiting and asks again.
                Err(e) => {
                    tracing::warn!(host, error = %e, "cannot read a power outcome from the store");
                    CommandState::Running
                }
            },
            Ok(None) => CommandState::NotConfigured,
            Err(PowerError::Denied(m) | PowerError::SpawnFailed(m)) => CommandState::Failed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn inventory() -> Inventory {
        Inventory::parse(
            Path::new("inv"),
            "ok 10.0.0.1 ncpus=1 nram=1 power_on=\"echo up {name}\"\nbad 10.0.0.2 ncpus=1 nram=1 power_on=\"echo boom >&2; exit 3\"\nplain 10.0.0.3 ncpus=1 nram=1\n",
        )
        .expect("inventory")
    }

    #[test]
    fn commands_run_and_their_outcomes_are_recorded_in_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).expect("store"));
        let inv = inventory();
        let ns = namespace("pool");
        let logs = dir.path().join("power");
        let ok = run_and_record(store.as_ref(), &ns, Some(&inv), &logs, "ok", Action::On, None).expect("ok");
        assert_eq!(
            ok,
            PowerOutcome::Finished {
                exit: 0,
                output: "up ok".into()
            }
        );
        run_and_record(store.as_ref(), &ns, Some(&inv), &logs, "bad", Action::On, None).expect("bad");
        let mut p = GuestPower::new(
            Some(Arc::new(inv)),
            store.clone(),
            ns.clone(),
            PowerRunner {
                exe: dir.path().join("no-such-hfwasm"),
                dir_args: Vec::new(),
                log_dir: logs,
                instance: "pool".into(),
            },
        );
        // Another process's outcomes are read from the store.
        assert_eq!(p.state("ok".into(), Action::On), CommandState::Succeeded);
        match p.state("bad".into(), Action::On) {
            CommandState::Failed(m) => assert!(m.contains("exit status 3") && m.contains("boom"), "{m}"),
            other => panic!("expected failure, got {other:?}"),
        }
        assert_eq!(p.state("ok".into(), Action::Off), CommandState::NotConfigured);
        assert_eq!(p.state("plain".into(), Action::On), CommandState::NotConfigured);
        assert_eq!(p.start("plain".into(), Action::Off).expect("start"), CommandState::NotConfigured);
        assert!(matches!(p.start("stranger".into(), Action::On), Err(PowerError::Denied(_))));
        // A runner that cannot start is an error, and the outcome says so (nothing hangs in `running`).
        assert!(matches!(p.start("ok".into(), Action::On), Err(PowerError::SpawnFailed(_))));
        assert!(matches!(p.state("ok".into(), Action::On), CommandState::Failed(m) if m.contains("no-such-hfwasm")));
    }

    #[test]
    fn one_command_per_host_at_a_time() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&dir.path().join("s.sqlite")).expect("store"));
        // A runner that counts its starts and never reports back (as a power-run that hangs).
        let runner = dir.path().join("runner.sh");
        std::fs::write(
            &runner,
            format!("#!/bin/sh\necho started >> {}\n", dir.path().join("count").display()),
        )
        .expect("runner");
        std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let ns = namespace("pool");
        let both = || {
            Inventory::parse(
                Path::new("inv"),
                "ok 10.0.0.1 ncpus=1 nram=1 power_on=\"echo up\" power_off=\"echo down\"\n",
            )
            .expect("inventory")
        };
        let mut p = GuestPower::new(
            Some(Arc::new(both())),
            store.clone(),
            ns.clone(),
            PowerRunner {
                exe: runner,
                dir_args: Vec::new(),
                log_dir: dir.path().join("power"),
                instance: "pool".into(),
            },
        );
        let starts = || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::fs::read_to_string(dir.path().join("count"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        for _ in 0..20 {
            assert_eq!(p.start("ok".into(), Action::On).expect("start"), CommandState::Running);
        }
        assert_eq!(starts(), 1, "twenty starts while one runs spawn one command");
        // A claim whose power-run died long ago is taken over.
        let held = store.kv_get(&ns, &claim_key("ok")).expect("get").expect("claimed");
        let stale = format!("on:0:{}", held.rsplit(':').next().unwrap_or_default());
        store.kv_delete_if_equals(&ns, &claim_key("ok"), &held).expect("delete");
        assert!(store.kv_insert_if_absent(&ns, &claim_key("ok"), &stale).expect("insert"));
        assert_eq!(p.start("ok".into(), Action::On).expect("start"), CommandState::Running);
        assert_eq!(starts(), 2);
        // Power-off while power-on runs waits, and does not read an old outcome as its own.
        record_outcome(
            store.as_ref(),
            &ns,
            "ok",
            Action::Off,
            &PowerOutcome::Finished {
                exit: 0,
                output: "old".into(),
            },
        )
        .expect("old");
        assert_eq!(p.start("ok".into(), Action::Off).expect("start"), CommandState::Running);
        assert_eq!(p.state("ok".into(), Action::Off), CommandState::NotStarted);
        assert_eq!(starts(), 2);
        // The outcome releases the claim: the next start runs.
        run_and_record(
            store.as_ref(),
            &ns,
            Some(&both()),
            &dir.path().join("power"),
            "ok",
            Action::On,
            None,
        )
        .expect("run");
        assert_eq!(store.kv_get(&ns, &claim_key("ok")).expect("get"), None);
        // Starting power-off clears power-on's outcome: after the host went down, the
        // power-on that succeeded last cycle is not read as this cycle's.
        assert_eq!(p.state("ok".into(), Action::On), CommandState::Succeeded);
        assert_eq!(p.start("ok".into(), Action::Off).expect("start"), CommandState::Running);
        assert_eq!(p.state("ok".into(), Action::On), CommandState::NotStarted);
        // Claimed, power-run not yet reporting: starting. Claimed long ago and still nothing
        // recorded (the claiming call was killed before power-run ran): given up, not started.
        assert_eq!(p.state("ok".into(), Action::Off), CommandState::Running);
        let held = store.kv_get(&ns, &claim_key("ok")).expect("get").expect("claimed");
        let old = format!("off:{}:x", crate::clock::now_secs() - 60);
        assert!(store.kv_delete_if_equals(&ns, &claim_key("ok"), &held).expect("delete"));
        assert!(store.kv_insert_if_absent(&ns, &claim_key("ok"), &old).expect("insert"));
        assert_eq!(p.state("ok".into(), Action::Off), CommandState::NotStarted);
        assert_eq!(
            store.kv_get(&ns, &claim_key("ok")).expect("get"),
            None,
            "the dead claim is given up"
        );
        // A power-run whose claim was given up runs nothing.
        let late = run_and_record(
            store.as_ref(),
            &ns,
            Some(&both()),
            &dir.path().join("power"),
            "ok",
            Action::Off,
            Some(&old),
        );
        assert!(late.is_err_and(|e| e.contains("given up")));
        assert_eq!(p.state("ok".into(), Action::Off), CommandState::NotStarted);
        // A start recorded long ago whose power-run never reported back counts as not started.
        record_outcome(store.as_ref(), &ns, "ok", Action::Off, &PowerOutcome::Running { started_at: 1 }).expect("lost");
        assert_eq!(p.state("ok".into(), Action::Off), CommandState::NotStarted);
    }

    #[test]
    fn a_hung_command_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("hung.log");
        let pidfile = dir.path().join("pid");
        let t0 = std::time::Instant::now();
        let outcome = run_command(
            &format!("sleep 30 & echo $! > {}; echo waiting; wait", pidfile.display()),
            &log,
            std::time::Duration::from_millis(500),
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "killed in time");
        match outcome {
            PowerOutcome::Finished { exit: -1, output } => {
                assert!(output.contains("killed after") && output.contains("waiting"), "{output}")
            }
            other => panic!("expected a killed command, got {other:?}"),
        }
        let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid").trim().parse().expect("number");
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: signal 0 only asks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "the command's own children are killed too");
    }
}
