//! `power` capability: runs the admin's power-on/power-off command for an inventory host
//! in the background and reports its outcome on later calls. The guest names a host and an
//! action; the command text comes only from the admin's inventory, so a guest cannot run
//! anything else. Outcomes live in `<workdir>/power/` so they outlive the process that
//! started the command (every HostFactory call is a new process).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::config::inventory::Inventory;
use crate::runtime::bindings::hostfactory::capabilities::power::{Action, CommandState, Host, PowerError};

/// Runs the command, then records its exit status atomically (tmp + rename).
const RUNNER: &str = r#"( eval "$1" ) >"$2" 2>&1 </dev/null; echo $? >"$3.tmp" && mv "$3.tmp" "$3""#;

/// Bytes of command output kept in a failure message.
const OUTPUT_TAIL: usize = 400;

/// Per-guest state of the power capability.
pub struct GuestPower {
    inventory: Option<Arc<Inventory>>,
    dir: PathBuf,
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::On => "on",
        Action::Off => "off",
    }
}

impl GuestPower {
    /// Commands from `inventory`; outcomes under `dir`.
    pub fn new(inventory: Option<Arc<Inventory>>, dir: PathBuf) -> Self {
        Self { inventory, dir }
    }

    fn command(&self, host: &str, act: Action) -> Result<Option<String>, PowerError> {
        let inv = self
            .inventory
            .as_ref()
            .ok_or_else(|| PowerError::Denied("no inventory is configured for this guest".into()))?;
        let h = inv
            .host(host)
            .ok_or_else(|| PowerError::Denied(format!("host `{host}` is not in the inventory {}", inv.file.display())))?;
        Ok(match act {
            Action::On => h.power_on.clone(),
            Action::Off => h.power_off.clone(),
        })
    }

    fn paths(&self, host: &str, act: Action) -> (PathBuf, PathBuf, PathBuf) {
        let base = format!("{host}.{}", action_name(act));
        (
            self.dir.join(format!("{base}.started")),
            self.dir.join(format!("{base}.log")),
            self.dir.join(format!("{base}.rc")),
        )
    }

    fn read_state(&self, host: &str, act: Action) -> CommandState {
        let (started, log, rc) = self.paths(host, act);
        match std::fs::read_to_string(&rc) {
            Ok(code) => {
                let code = code.trim();
                if code == "0" {
                    CommandState::Succeeded
                } else {
                    CommandState::Failed(format!("exit status {code}: {}", tail(&log)))
                }
            }
            Err(_) if started.exists() => CommandState::Running,
            Err(_) => CommandState::NotStarted,
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
        let Some(cmd) = self.command(&host, act)? else {
            return Ok(CommandState::NotConfigured);
        };
        let spawn_err = |what: &str, e: std::io::Error| PowerError::SpawnFailed(format!("{what}: {e}"));
        std::fs::create_dir_all(&self.dir).map_err(|e| spawn_err(&format!("cannot create {}", self.dir.display()), e))?;
        let (started, log, rc) = self.paths(&host, act);
        for old in [&rc, &log] {
            if let Err(e) = std::fs::remove_file(old)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(spawn_err(&format!("cannot clear {}", old.display()), e));
            }
        }
        std::fs::write(&started, b"").map_err(|e| spawn_err(&format!("cannot write {}", started.display()), e))?;
        let mut child = Command::new("/bin/sh");
        child.arg("-c").arg(RUNNER).arg("hfwasm-power").arg(&cmd).arg(&log).arg(&rc);
        child.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        #[cfg(unix)]
        {
            // Own process group: the command outlives this HostFactory call.
            use std::os::unix::process::CommandExt;
            child.process_group(0);
        }
        child.spawn().map_err(|e| spawn_err("cannot run /bin/sh", e))?;
        tracing::info!(host, action = action_name(act), command = %cmd, "power command started");
        Ok(CommandState::Running)
    }

    fn state(&mut self, host: String, act: Action) -> CommandState {
        match self.command(&host, act) {
            Ok(Some(_)) => self.read_state(&host, act),
            Ok(None) => CommandState::NotConfigured,
            Err(PowerError::Denied(m) | PowerError::SpawnFailed(m)) => CommandState::Failed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait(p: &mut GuestPower, host: &str, act: Action) -> CommandState {
        let t0 = Instant::now();
        loop {
            let s = p.state(host.into(), act);
            if !matches!(s, CommandState::Running) || t0.elapsed() > Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn runs_admin_commands_and_reports_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inv = Inventory::parse(
            Path::new("inv"),
            "ok 10.0.0.1 ncpus=1 nram=1 power_on=\"echo up {name}\"\nbad 10.0.0.2 ncpus=1 nram=1 power_on=\"echo boom >&2; exit 3\"\nplain 10.0.0.3 ncpus=1 nram=1\n",
        )
        .expect("inventory");
        let mut p = GuestPower::new(Some(Arc::new(inv)), dir.path().join("power"));
        assert_eq!(p.state("ok".into(), Action::On), CommandState::NotStarted);
        assert_eq!(p.start("ok".into(), Action::On).expect("start"), CommandState::Running);
        assert_eq!(wait(&mut p, "ok", Action::On), CommandState::Succeeded);
        p.start("bad".into(), Action::On).expect("start");
        match wait(&mut p, "bad", Action::On) {
            CommandState::Failed(m) => assert!(m.contains("exit status 3") && m.contains("boom"), "{m}"),
            other => panic!("expected failure, got {other:?}"),
        }
        assert_eq!(p.start("plain".into(), Action::Off).expect("start"), CommandState::NotConfigured);
        assert!(matches!(p.start("stranger".into(), Action::On), Err(PowerError::Denied(_))));
    }
}
