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

use crate::config::inventory::Inventory;
use crate::runtime::bindings::hostfactory::capabilities::power::{Action, CommandState, Host, PowerError};
use crate::store::{StateStore, StoreError};

/// Bytes of command output kept in a failure message.
const OUTPUT_TAIL: usize = 400;

/// The kv namespace of provider instance `instance`'s power outcomes (no guest can name it:
/// guest namespaces are `<instance>/<guest>`).
pub fn namespace(instance: &str) -> String {
    format!("hfwasm.power/{instance}")
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

/// Runs `command` in `/bin/sh` to completion, its output to `log`; returns the outcome.
pub fn run_command(command: &str, log: &Path) -> PowerOutcome {
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
    let status = match out {
        Ok((o, e)) => Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .status(),
        Err(e) => Err(e),
    };
    match status {
        Ok(st) => PowerOutcome::Finished {
            exit: st.code().unwrap_or(-1),
            output: tail(log),
        },
        Err(e) => PowerOutcome::Finished {
            exit: -1,
            output: format!("cannot run /bin/sh (output to {}): {e}", log.display()),
        },
    }
}

/// The body of `hfwasm power-run`: runs `host`'s configured `act` command and records its
/// outcome. The command is looked up again here, from the admin's inventory.
pub fn run_and_record(
    store: &dyn StateStore,
    namespace: &str,
    inventory: Option<&Inventory>,
    log_dir: &Path,
    host: &str,
    act: Action,
) -> Result<PowerOutcome, String> {
    let outcome = match command_for(inventory, host, act) {
        Ok(Some(cmd)) => {
            std::fs::create_dir_all(log_dir).map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
            let outcome = run_command(&cmd, &log_dir.join(format!("{}.log", key(host, act))));
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
    Ok(outcome)
}

impl GuestPower {
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Host for GuestPower {
    fn start(&mut self, host: String, act: Action) -> Result<CommandState, PowerError> {
        if command_for(self.inventory.as_deref(), &host, act)?.is_none() {
            return Ok(CommandState::NotConfigured);
        }
        let spawn_err = |what: &str, e: &dyn std::fmt::Display| PowerError::SpawnFailed(format!("{what}: {e}"));
        record_outcome(
            self.store.as_ref(),
            &self.namespace,
            &host,
            act,
            &PowerOutcome::Running { started_at: now_secs() },
        )
        .map_err(|e| spawn_err("cannot record the start in the store", &e))?;
        let mut child = Command::new(&self.runner.exe);
        child
            .args(&self.runner.dir_args)
            .arg("power-run")
            .arg("--host")
            .arg(&host)
            .arg("--action")
            .arg(action_name(act))
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
            return Err(spawn_err(&format!("cannot run {} power-run", self.runner.exe.display()), &e));
        }
        tracing::info!(host, action = action_name(act), "power command started");
        Ok(CommandState::Running)
    }

    fn state(&mut self, host: String, act: Action) -> CommandState {
        match command_for(self.inventory.as_deref(), &host, act) {
            Ok(Some(_)) => match read_outcome(self.store.as_ref(), &self.namespace, &host, act) {
                Ok(Some(o)) => o.command_state(),
                Ok(None) => CommandState::NotStarted,
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
        let ok = run_and_record(store.as_ref(), &ns, Some(&inv), &logs, "ok", Action::On).expect("ok");
        assert_eq!(
            ok,
            PowerOutcome::Finished {
                exit: 0,
                output: "up ok".into()
            }
        );
        run_and_record(store.as_ref(), &ns, Some(&inv), &logs, "bad", Action::On).expect("bad");
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
}
