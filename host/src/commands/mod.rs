//! One file per `hfwasm` command, cargo-style (`src/bin/cargo/commands/`): each defines its
//! arguments and runs them. Shared here: the directory flags, opening the plugin for an
//! admin command, and the one printer of an admin command's error.

pub mod call;
pub mod config;
pub mod demo;
pub mod guest;
pub mod init;
pub mod machines;
pub mod power_run;
pub mod replay;
pub mod requests;
pub mod serve;
pub mod store;
pub mod templates;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use hfwasm::hf::dirs::DirOverrides;
use hfwasm::hf::{HfError, ProviderDirs};
use hfwasm::plugin::Plugin;

/// The directory flags every command takes.
#[derive(Args, Clone, Default)]
pub struct DirArgs {
    /// Provider config dir (overrides HF_PROVIDER_CONFDIR / PRO_CONF_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub confdir: Option<PathBuf>,
    /// Provider state dir (overrides HF_PROVIDER_WORKDIR / PRO_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Log dir (overrides HF_PROVIDER_LOGDIR / PRO_LSF_LOGDIR); logs go to stderr without one.
    #[arg(long, global = true, value_name = "DIR")]
    pub logdir: Option<PathBuf>,
}

/// The provider instance's directories: the flags over HostFactory's environment.
pub fn dirs(d: &DirArgs) -> Result<ProviderDirs, HfError> {
    ProviderDirs::resolve(
        |k| std::env::var(k).ok(),
        &DirOverrides {
            conf_dir: d.confdir.clone(),
            work_dir: d.workdir.clone(),
            log_dir: d.logdir.clone(),
        },
    )
}

/// Logs to the config's log file, else `<logdir>/hfwasm-<instance>.log`, at the config's
/// level: where a HostFactory call and `serve` write.
pub fn init_log(plugin: &Plugin) {
    let (log, dirs) = (&plugin.config.log, &plugin.dirs);
    let file = log
        .file
        .clone()
        .or_else(|| dirs.log_dir.as_ref().map(|d| d.join(format!("hfwasm-{}.log", dirs.name))));
    hfwasm::logging::init_file(&plugin.config.log_level, file.as_deref(), log.max_bytes, log.keep);
}

/// Runs `f` on the plugin of the instance (config and inventory) and prints its result.
pub fn admin<T>(d: &DirArgs, f: impl FnOnce(&Plugin) -> Result<T, HfError>, print: impl FnOnce(T)) -> ExitCode {
    admin_with(d, Plugin::open, f, print)
}

/// An admin command on the plugin `open` builds (the store commands skip the inventory).
pub fn admin_with<T>(
    d: &DirArgs,
    open: fn(ProviderDirs) -> Result<Plugin, HfError>,
    f: impl FnOnce(&Plugin) -> Result<T, HfError>,
    print: impl FnOnce(T),
) -> ExitCode {
    match admin_result(d, open, f) {
        Ok(v) => {
            print(v);
            ExitCode::SUCCESS
        }
        Err(e) => print_error(&e),
    }
}

/// `f` on the plugin `open` builds for the dirs (admin logging: warnings on stderr).
pub fn admin_result<T>(
    d: &DirArgs,
    open: fn(ProviderDirs) -> Result<Plugin, HfError>,
    f: impl FnOnce(&Plugin) -> Result<T, HfError>,
) -> Result<T, HfError> {
    dirs(d)
        .and_then(|dirs| {
            hfwasm::logging::init("warn", None, &dirs.name);
            open(dirs)
        })
        .and_then(|p| f(&p))
}

/// The one printer of an admin command's error: message and code, then its details, on
/// stderr (stdout belongs to HostFactory's calls and to the commands' reports).
pub fn print_error(e: &HfError) -> ExitCode {
    eprintln!("error: {} ({})", e.message, e.code.as_str());
    if !e.details.is_empty() {
        eprintln!("details: {}", serde_json::Value::Object(e.details.clone()));
    }
    ExitCode::from(1)
}

/// A command's own failure that is not an `HfError` (a file it could not write, a guest it
/// could not build), on stderr.
pub fn print_failure(what: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {what}");
    ExitCode::from(1)
}

/// Prints `items` as one JSON array (`json`), else as a table under `headers` with one row
/// per item from `row`.
pub fn print_list<T: serde::Serialize>(json: bool, items: &[T], headers: &[&str], row: impl Fn(&T) -> Vec<String>) {
    if json {
        println!("{}", serde_json::to_string_pretty(items).unwrap_or_default());
    } else {
        print_table(headers, items.iter().map(row).collect());
    }
}

/// Prints `rows` under `headers` as aligned columns (the last column unpadded), or a line
/// saying there is nothing to list.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
