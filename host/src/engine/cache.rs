//! Precompiled guests: each component is compiled once into a `.cwasm` file keyed by the
//! sha256 of its bytes (built-in guests': computed at build time), the engine's compatibility hash and the codegen flags, then loaded
//! with `Component::deserialize_file` (no JIT on the hot path). A changed `.wasm` has a
//! new key, so stale code is never run.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::GuestEngine;

/// Directory of `.cwasm` files.
#[derive(Debug, Clone)]
pub struct PrecompiledCache {
    dir: PathBuf,
}

/// Whether a load hit the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded an existing `.cwasm`.
    Hit,
    /// Compiled and stored a new `.cwasm`.
    Compiled,
}

impl PrecompiledCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The cache file for `wasm` under `engine` (in this user's directory of the cache).
    pub fn path_for(&self, engine: &GuestEngine, wasm: &[u8]) -> PathBuf {
        self.usable_dir()
            .unwrap_or_else(|_| self.dir.clone())
            .join(self.file_name(engine, wasm))
    }

    /// Loads `wasm` from the cache, compiling and storing it first if needed. A `.cwasm`
    /// is native code, so one is run only when [`Self::verified`] vouches for it; a cache
    /// that cannot be trusted (another user's directory) is not used at all, and the guest
    /// is compiled for this call alone.
    pub fn load(&self, engine: &GuestEngine, wasm: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let dir = match self.usable_dir() {
            Ok(d) => d,
            Err(why) => {
                tracing::warn!(cache = %self.dir.display(), "precompiled cache not used: {why}; compiling in memory");
                return Ok((Component::new(engine.engine(), wasm)?, CacheOutcome::Compiled));
            }
        };
        let path = dir.join(self.file_name(engine, wasm));
        match self.verified(&dir, &path) {
            Ok(()) => {
                // SAFETY: `verified` checked that this file is the one this process's user
                // compiled with `Engine::precompile_component` for this engine configuration
                // (the name holds the engine's compatibility hash) and that nobody changed it
                // since: owner, mode, inode and change time bound to a keyed digest.
                match unsafe { Component::deserialize_file(engine.engine(), &path) } {
                    Ok(c) => return Ok((c, CacheOutcome::Hit)),
                    Err(e) => tracing::warn!(file = %path.display(), error = %e, "unusable precompiled guest; recompiling"),
                }
            }
            Err(why) if path.exists() => tracing::warn!(file = %path.display(), "precompiled guest refused: {why}; recompiling"),
            Err(_) => {}
        }
        let compiled = engine.engine().precompile_component(wasm)?;
        self.store(&dir, &path, &compiled)?;
        // SAFETY: as above; the file was just written from `precompile_component`, 0600, in
        // a directory only this user can write.
        let component = unsafe { Component::deserialize_file(engine.engine(), &path)? };
        Ok((component, CacheOutcome::Compiled))
    }

    /// The directory to use: the configured one when this user owns it and nobody else can
    /// write in it; else (a shared `HFWASM_CACHE_DIR`) a `hfwasm-<uid>` directory of this
    /// user's inside it; else none, with why.
    fn usable_dir(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let private = |d: &Path| -> Result<(), String> {
            let m = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
            if !m.is_dir() {
                return Err(format!("{} is not a directory (a symbolic link?)", d.display()));
            }
            if m.uid() != me || m.mode() & 0o022 != 0 {
                return Err(format!(
                    "{} belongs to another user or others may write in it (mode {:04o})",
                    d.display(),
                    m.mode() & 0o7777
                ));
            }
            Ok(())
        };
        if !self.dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| {
                    format!(
                        "cannot create {}: {e}{}",
                        self.dir.display(),
                        crate::ownership::hint_for(&e, &self.dir)
                    )
                })?;
        }
        if private(&self.dir).is_ok() {
            return Ok(self.dir.clone());
        }
        let own = self.dir.join(format!("hfwasm-{me}"));
        if !own.exists() {
            // Another user may race to plant it first; `private` below catches that.
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&own);
        }
        private(&own).map(|()| own)
    }

    /// The cache file name for `wasm` under `engine` (see [`Self::path_for`]).
    fn file_name(&self, engine: &GuestEngine, wasm: &[u8]) -> String {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.engine().precompile_compatibility_hash().hash(&mut compat);
        let mut h = Sha256::new();
        match crate::builtin::digest(wasm) {
            Some(d) => h.update(d),
            None => h.update(Sha256::digest(wasm)),
        }
        h.update(compat.finish().to_le_bytes());
        h.update(engine.codegen_flags().as_bytes());
        let digest = h.finalize();
        let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
        format!("{hex}.cwasm")
    }

    /// This user's cache key (32 random bytes in `<dir>/.key`, 0600, made once).
    fn key(dir: &Path) -> Result<Vec<u8>, String> {
        use std::io::Write;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = dir.join(".key");
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(mut f) => {
                let key: Vec<u8> = (0..2).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
                f.write_all(&key).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                return Ok(key);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let m = f.metadata().map_err(|e| e.to_string())?;
        if !m.is_file() || m.uid() != me || m.mode() & 0o077 != 0 {
            return Err(format!("{} is not this user's private key file", path.display()));
        }
        let mut key = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, 64), &mut key).map_err(|e| e.to_string())?;
        if key.len() != 32 {
            return Err(format!("{} is not a cache key (32 bytes)", path.display()));
        }
        Ok(key)
    }

    /// The seal of a cache file: its digest and the identity of the file on disk (device,
    /// inode, size, change time), under an HMAC with this user's key. Any write to the file
    /// changes its change time, which only the system clock's owner can forge.
    fn seal(key: &[u8], digest: &str, m: &std::fs::Metadata) -> String {
        use std::os::unix::fs::MetadataExt;
        let body = format!("v1 {digest} {} {} {} {}.{}", m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec());
        let mac: String = hmac_sha256(key, body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        format!("{body} {mac}\n")
    }

    /// Ok when `path` is a regular file of this user, not writable by others, unchanged
    /// since this user's hfwasm compiled it (its `.seal` matches); else why not.
    fn verified(&self, dir: &Path, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| e.to_string())?;
        let m = f.metadata().map_err(|e| e.to_string())?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !m.is_file() || m.uid() != me || m.mode() & 0o022 != 0 {
            return Err(format!(
                "not a file of this user's only (owner uid {}, mode {:04o})",
                m.uid(),
                m.mode() & 0o7777
            ));
        }
        let seal = crate::limits::read_capped(&seal_path(path), 4096).map_err(|e| format!("no seal: {e}"))?;
        let digest = seal.split(' ').nth(1).unwrap_or_default().to_string();
        if seal != Self::seal(&Self::key(dir)?, &digest, &m) {
            return Err("its seal does not match (the file was changed after it was compiled)".into());
        }
        Ok(())
    }

    fn store(&self, dir: &Path, path: &Path, bytes: &[u8]) -> wasmtime::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |what: &str, e: std::io::Error| {
            wasmtime::Error::msg(format!(
                "precompiled cache {}: {what}: {e}{} (or point HFWASM_CACHE_DIR at a directory this user owns)",
                dir.display(),
                crate::ownership::hint_for(&e, dir)
            ))
        };
        // Unpredictable temp names, created exclusively, never through a link.
        let write_new = |target: &Path, data: &[u8]| -> std::io::Result<()> {
            let tmp = target.with_extension(format!("tmp.{}", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(data)?;
            drop(f);
            std::fs::rename(&tmp, target).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        write_new(path, bytes).map_err(|e| err("cannot write", e))?;
        let digest: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        let sealed = Self::key(dir)
            .map_err(wasmtime::Error::msg)
            .and_then(|key| {
                let m = std::fs::symlink_metadata(path).map_err(|e| err("cannot stat", e))?;
                Ok(Self::seal(&key, &digest, &m))
            })
            .and_then(|seal| write_new(&seal_path(path), seal.as_bytes()).map_err(|e| err("cannot write the seal", e)));
        if let Err(e) = sealed {
            // The compiled code is used now; without a seal it is compiled again next time.
            tracing::warn!(error = %e, "cannot seal the precompiled guest");
        }
        Ok(())
    }
}

/// Where the seal of cache file `path` is kept.
fn seal_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.seal")
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
