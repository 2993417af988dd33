//! Precompiled guests: each component is compiled once into a `.cwasm` file keyed by the
//! sha256 of its bytes (built-in guests': computed at build time), the engine's compatibility hash and the codegen flags, then loaded
//! with `Component::deserialize_file` (no JIT on the hot path). A changed `.wasm` has a
//! new key, so stale code is never run.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::engine::GuestEngine;

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

    /// The cache file for `wasm` under `engine`.
    pub fn path_for(&self, engine: &GuestEngine, wasm: &[u8]) -> PathBuf {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.engine().precompile_compatibility_hash().hash(&mut compat);
        let mut h = Sha256::new();
        match super::builtin::digest(wasm) {
            Some(d) => h.update(d),
            None => h.update(Sha256::digest(wasm)),
        }
        h.update(compat.finish().to_le_bytes());
        h.update(engine.codegen_flags().as_bytes());
        let digest = h.finalize();
        let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.cwasm"))
    }

    /// Loads `wasm` from the cache, compiling and storing it first if needed.
    pub fn load(&self, engine: &GuestEngine, wasm: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.path_for(engine, wasm);
        if path.exists() {
            // SAFETY: files in this directory are written only by `store` below, from
            // `Engine::precompile_component` of this engine configuration (the key includes
            // the engine's compatibility hash), and renamed into place atomically.
            match unsafe { Component::deserialize_file(engine.engine(), &path) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "unusable precompiled guest; recompiling"),
            }
        }
        let compiled = engine.engine().precompile_component(wasm)?;
        self.store(&path, &compiled)?;
        // SAFETY: as above; the file was just written from `precompile_component`.
        let component = unsafe { Component::deserialize_file(engine.engine(), &path)? };
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> wasmtime::Result<()> {
        let err = |what: &str, e: std::io::Error| {
            wasmtime::Error::msg(format!(
                "precompiled cache {}: {what}: {e}{} (or point HFWASM_CACHE_DIR at a directory this user owns)",
                self.dir.display(),
                crate::ownership::hint_for(&e, &self.dir)
            ))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| err("cannot create", e))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| err("cannot write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| err("cannot rename into place", e))?;
        Ok(())
    }
}
