//! Where a provider instance keeps config, state and logs, from HostFactory's or LSF's
//! environment (contract §1.3): `HF_PROVIDER_*` first, then LSF's `PRO_*`, then defaults.

use std::path::{Path, PathBuf};

use super::{ErrorCode, HfError};

/// The provider instance and its three directories.
#[derive(Debug, Clone)]
pub struct ProviderDirs {
    /// Provider instance name (`HF_PROVIDER_NAME`, LSF `PROVIDER_NAME`).
    pub name: String,
    /// Config dir: `HF_PROVIDER_CONFDIR`, `PRO_CONF_DIR` (its `conf/` if present), or
    /// `$HF_CONFDIR/providers/<name>/`.
    pub conf_dir: PathBuf,
    /// State dir: `HF_PROVIDER_WORKDIR`, `PRO_DATA_DIR`, or `$HF_WORKDIR/providers/<name>/`.
    pub work_dir: PathBuf,
    /// Log dir: `HF_PROVIDER_LOGDIR`, `PRO_LSF_LOGDIR`, or `$HF_LOGDIR`; None = stderr.
    pub log_dir: Option<PathBuf>,
}

/// Explicit overrides (command-line flags) that win over the environment.
#[derive(Debug, Clone, Default)]
pub struct DirOverrides {
    /// `--confdir`.
    pub conf_dir: Option<PathBuf>,
    /// `--workdir`.
    pub work_dir: Option<PathBuf>,
    /// `--logdir`.
    pub log_dir: Option<PathBuf>,
}

impl ProviderDirs {
    /// Resolves the directories from `env` (a lookup, so tests need not touch the process
    /// environment) and explicit overrides.
    pub fn resolve(env: impl Fn(&str) -> Option<String>, over: &DirOverrides) -> Result<Self, HfError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let name = get("HF_PROVIDER_NAME")
            .or_else(|| get("PROVIDER_NAME"))
            .unwrap_or_else(|| "hfwasm".to_string());
        let per_instance = |base: &str| get(base).map(|b| Path::new(&b).join("providers").join(&name));

        let conf_dir = over
            .conf_dir
            .clone()
            .or_else(|| get("HF_PROVIDER_CONFDIR").map(PathBuf::from))
            .or_else(|| {
                get("PRO_CONF_DIR").map(|d| {
                    // LSF keeps provider files under <confPath>/conf/.
                    let conf = Path::new(&d).join("conf");
                    if conf.is_dir() { conf } else { PathBuf::from(d) }
                })
            })
            .or_else(|| per_instance("HF_CONFDIR"))
            .ok_or_else(|| {
                HfError::new(
                    ErrorCode::ConfigError,
                    "no provider config directory: set HF_PROVIDER_CONFDIR (HostFactory), PRO_CONF_DIR (LSF) or HF_CONFDIR, or pass --confdir",
                )
            })?;
        let work_dir = over
            .work_dir
            .clone()
            .or_else(|| get("HF_PROVIDER_WORKDIR").map(PathBuf::from))
            .or_else(|| get("PRO_DATA_DIR").map(PathBuf::from))
            .or_else(|| per_instance("HF_WORKDIR"))
            .ok_or_else(|| {
                HfError::new(
                    ErrorCode::ConfigError,
                    "no provider work directory: set HF_PROVIDER_WORKDIR (HostFactory), PRO_DATA_DIR (LSF) or HF_WORKDIR, or pass --workdir",
                )
            })?;
        let log_dir = over
            .log_dir
            .clone()
            .or_else(|| get("HF_PROVIDER_LOGDIR").map(PathBuf::from))
            .or_else(|| get("PRO_LSF_LOGDIR").map(PathBuf::from))
            .or_else(|| get("HF_LOGDIR").map(PathBuf::from));
        // Absolute from here on: a relative `--confdir conf` (as in `--help`) must not be
        // joined onto itself when a file found in it is resolved again (`conf/conf/...`).
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        Ok(Self {
            name,
            conf_dir: absolute(conf_dir),
            work_dir: absolute(work_dir),
            log_dir: log_dir.map(absolute),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn hostfactory_variables_win() {
        let d = ProviderDirs::resolve(
            env(&[
                ("HF_PROVIDER_NAME", "awsinst"),
                ("HF_PROVIDER_CONFDIR", "/c"),
                ("HF_PROVIDER_WORKDIR", "/w"),
                ("HF_PROVIDER_LOGDIR", "/l"),
                ("PRO_CONF_DIR", "/lsf"),
            ]),
            &DirOverrides::default(),
        )
        .expect("resolves");
        assert_eq!(
            (d.name.as_str(), d.conf_dir.as_path(), d.work_dir.as_path()),
            ("awsinst", Path::new("/c"), Path::new("/w"))
        );
        assert_eq!(d.log_dir.as_deref(), Some(Path::new("/l")));
    }

    #[test]
    fn lsf_variables_are_the_fallback() {
        let d = ProviderDirs::resolve(
            env(&[
                ("PROVIDER_NAME", "aws"),
                ("PRO_CONF_DIR", "/nonexistent/lsf"),
                ("PRO_DATA_DIR", "/data"),
                ("PRO_LSF_LOGDIR", "/log"),
            ]),
            &DirOverrides::default(),
        )
        .expect("resolves");
        assert_eq!(d.name, "aws");
        assert_eq!(d.conf_dir, Path::new("/nonexistent/lsf"));
        assert_eq!(d.work_dir, Path::new("/data"));
        assert_eq!(d.log_dir.as_deref(), Some(Path::new("/log")));
    }

    #[test]
    fn documented_defaults_use_the_instance_name() {
        let d = ProviderDirs::resolve(
            env(&[("HF_PROVIDER_NAME", "pool"), ("HF_CONFDIR", "/hf/conf"), ("HF_WORKDIR", "/hf/work")]),
            &DirOverrides::default(),
        )
        .expect("resolves");
        assert_eq!(d.conf_dir, Path::new("/hf/conf/providers/pool"));
        assert_eq!(d.work_dir, Path::new("/hf/work/providers/pool"));
        assert!(d.log_dir.is_none());
    }

    #[test]
    fn relative_directories_become_absolute() {
        let over = DirOverrides {
            conf_dir: Some(PathBuf::from("conf")),
            work_dir: Some(PathBuf::from("./work")),
            log_dir: Some(PathBuf::from("log")),
        };
        let d = ProviderDirs::resolve(env(&[]), &over).expect("resolves");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(d.conf_dir, cwd.join("conf"));
        assert_eq!(d.work_dir, cwd.join("work"));
        assert_eq!(d.log_dir, Some(cwd.join("log")));
    }

    #[test]
    fn nothing_set_names_the_variables() {
        let e = ProviderDirs::resolve(env(&[]), &DirOverrides::default()).expect_err("must fail");
        assert!(
            e.message.contains("HF_PROVIDER_CONFDIR") && e.message.contains("PRO_CONF_DIR"),
            "{}",
            e.message
        );
    }
}
