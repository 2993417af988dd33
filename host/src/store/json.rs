//! The seed's `json` strategy: state as JSON files a person can read, in one directory.
//! Every operation takes an advisory lock on `<dir>/.hfwasm-state.lock` (shared to read,
//! exclusive to change), reads the files, and, only when something changed, writes each
//! changed file to a temp file, fsyncs it and renames it over the old one. A `kill -9` at
//! any point leaves either the old or the new file, never half of one.
//!
//! `single_file` keeps everything in `hfwasm-state.json` (the export format);
//! `split_files` keeps `requests.json`, `machines.json` and `kv.json`, and a change
//! rewrites only the files it touched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::document::{StoredMachine, StoredRequest, upsert_machines};
use super::{BackendReport, Document, RequestKind, RequestRecord, SCHEMA_VERSION, StateStore, StoreError};
use crate::domain::model::Machine;

/// How the JSON store lays out its files (`json_strategy.storage_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonLayout {
    /// Everything in `hfwasm-state.json`.
    SingleFile,
    /// `requests.json`, `machines.json` and `kv.json`.
    SplitFiles,
}

impl JsonLayout {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JsonLayout::SingleFile => "single_file",
            JsonLayout::SplitFiles => "split_files",
        }
    }
}

const SINGLE: &str = "hfwasm-state.json";
const REQUESTS: &str = "requests.json";
const MACHINES: &str = "machines.json";
const KV: &str = "kv.json";
const LOCK: &str = ".hfwasm-state.lock";

/// `requests.json` of the split layout: requests without their machines.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsFile {
    schema_version: i64,
    requests: Vec<StoredRequest>,
}

/// `machines.json` of the split layout: request id → machines.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachinesFile {
    schema_version: i64,
    machines: BTreeMap<String, Vec<StoredMachine>>,
}

/// `kv.json` of the split layout.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvFile {
    schema_version: i64,
    kv: BTreeMap<String, BTreeMap<String, String>>,
}

/// JSON-file-backed [`StateStore`].
pub struct JsonStore {
    dir: PathBuf,
    layout: JsonLayout,
    /// Serialises this process's threads; the file lock serialises processes.
    local: Mutex<()>,
}

impl JsonStore {
    /// Opens the store in `dir` (created if missing) and checks its schema version.
    pub fn open(dir: &Path, layout: JsonLayout) -> Result<Self, StoreError> {
        let store = Self {
            dir: dir.to_path_buf(),
            layout,
            local: Mutex::new(()),
        };
        std::fs::create_dir_all(dir).map_err(|e| store.backend(format!("cannot create directory: {e}")))?;
        store.read(|_| ())?;
        Ok(store)
    }

    fn location(&self) -> String {
        format!("{} ({})", self.dir.display(), self.layout.as_str())
    }

    fn backend(&self, message: String) -> StoreError {
        StoreError::Backend {
            location: self.location(),
            message,
        }
    }

    /// Takes the process-local and the cross-process lock.
    fn lock(&self, exclusive: bool) -> Result<(std::sync::MutexGuard<'_, ()>, File), StoreError> {
        let guard = self
            .local
            .lock()
            .map_err(|_| self.backend("lock poisoned by an earlier panic".into()))?;
        let path = self.dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.backend(format!("cannot open lock file {}: {e}", path.display())))?;
        // Waits at most STORE_LOCK_TIMEOUT: a process that hangs holding the lock fails
        // the calls behind it with a named error instead of hanging them too.
        let limit = crate::limits::STORE_LOCK_TIMEOUT;
        let t0 = std::time::Instant::now();
        loop {
            let attempt = if exclusive { file.try_lock() } else { file.try_lock_shared() };
            match attempt {
                Ok(()) => return Ok((guard, file)),
                Err(std::fs::TryLockError::WouldBlock) if t0.elapsed() < limit => std::thread::sleep(std::time::Duration::from_millis(2)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(self.backend(format!(
                        "{} is still locked by another process after {} s (limits::STORE_LOCK_TIMEOUT); is an hfwasm process hung?",
                        path.display(),
                        limit.as_secs()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(self.backend(format!("cannot lock {}: {e}", path.display()))),
            }
        }
    }

    /// Reads one file; a missing file is `T::default()`.
    fn load_file<T: Default + for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, StoreError> {
        let path = self.dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => return Err(self.backend(format!("cannot read {}: {e}", path.display()))),
        };
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            location: self.location(),
            message: format!("{}: {e}", path.display()),
        })
    }

    fn check_version(&self, found: i64, file: &str) -> Result<(), StoreError> {
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                location: format!("{}", self.dir.join(file).display()),
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// The whole content, under a lock the caller holds.
    fn load(&self) -> Result<Document, StoreError> {
        match self.layout {
            JsonLayout::SingleFile => {
                let doc: Document = self.load_file(SINGLE)?;
                self.check_version(doc.schema_version, SINGLE)?;
                Ok(doc)
            }
            JsonLayout::SplitFiles => {
                let requests: RequestsFile = self.load_file(REQUESTS)?;
                let mut machines: MachinesFile = self.load_file(MACHINES)?;
                let kv: KvFile = self.load_file(KV)?;
                for (v, f) in [
                    (requests.schema_version, REQUESTS),
                    (machines.schema_version, MACHINES),
                    (kv.schema_version, KV),
                ] {
                    self.check_version(v, f)?;
                }
                let mut doc = Document {
                    schema_version: requests.schema_version.max(machines.schema_version).max(kv.schema_version),
                    requests: requests.requests,
                    kv: kv.kv,
                };
                for r in &mut doc.requests {
                    r.machines = machines.machines.remove(&r.id).unwrap_or_default();
                }
                if !machines.machines.is_empty() {
                    return Err(StoreError::Corrupt {
                        location: self.location(),
                        message: format!(
                            "{MACHINES} lists machines of request(s) {} that {REQUESTS} does not hold",
                            machines.machines.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                Ok(doc)
            }
        }
    }

    /// Writes `value` to `name` atomically: temp file, fsync, rename, fsync of the directory.
    fn write_file(&self, name: &str, value: &impl Serialize) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let io = |what: &str, e: std::io::Error| self.backend(format!("cannot {what} {}: {e}", tmp.display()));
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| self.backend(format!("cannot encode {name}: {e}")))?;
        bytes.push(b'\n');
        let mut f = File::create(&tmp).map_err(|e| io("create", e))?;
        f.write_all(&bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        drop(f);
        crate::faults::point("json-store:before-rename");
        std::fs::rename(&tmp, &path).map_err(|e| self.backend(format!("cannot rename {} to {}: {e}", tmp.display(), path.display())))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.backend(format!("cannot fsync directory: {e}")))
    }

    /// Stores `new`, rewriting only the files whose content differs from `old`.
    fn save(&self, old: &Document, new: &Document) -> Result<(), StoreError> {
        // Temp files of writers that died mid-write (we hold the exclusive lock, so no
        // live writer owns one).
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".json.tmp.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        match self.layout {
            JsonLayout::SingleFile => self.write_file(SINGLE, new),
            JsonLayout::SplitFiles => {
                let strip = |d: &Document| {
                    d.requests
                        .iter()
                        .map(|r| StoredRequest {
                            machines: Vec::new(),
                            ..r.clone()
                        })
                        .collect::<Vec<_>>()
                };
                let machines_of = |d: &Document| {
                    d.requests
                        .iter()
                        .filter(|r| !r.machines.is_empty())
                        .map(|r| (r.id.clone(), r.machines.clone()))
                        .collect::<BTreeMap<_, _>>()
                };
                let (old_requests, new_requests) = (strip(old), strip(new));
                if old_requests != new_requests || old.schema_version != new.schema_version {
                    self.write_file(
                        REQUESTS,
                        &RequestsFile {
                            schema_version: new.schema_version,
                            requests: new_requests,
                        },
                    )?;
                }
                let new_machines = machines_of(new);
                if machines_of(old) != new_machines || old.schema_version != new.schema_version {
                    self.write_file(
                        MACHINES,
                        &MachinesFile {
                            schema_version: new.schema_version,
                            machines: new_machines,
                        },
                    )?;
                }
                if old.kv != new.kv || old.schema_version != new.schema_version {
                    self.write_file(
                        KV,
                        &KvFile {
                            schema_version: new.schema_version,
                            kv: new.kv.clone(),
                        },
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Reads under a shared lock.
    fn read<T>(&self, f: impl FnOnce(&Document) -> T) -> Result<T, StoreError> {
        let _lock = self.lock(false)?;
        let doc = self.load()?;
        Ok(f(&doc))
    }

    /// One transaction: exclusive lock, load, change, save what changed.
    fn change<T>(&self, f: impl FnOnce(&mut Document) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _lock = self.lock(true)?;
        let old = self.load()?;
        let mut new = old.clone();
        let out = f(&mut new)?;
        if new != old {
            new.schema_version = SCHEMA_VERSION;
            self.save(&old, &new)?;
        }
        Ok(out)
    }
}

fn find<'a>(doc: &'a mut Document, id: &str) -> Option<&'a mut StoredRequest> {
    doc.requests.iter_mut().find(|r| r.id == id)
}

impl StateStore for JsonStore {
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        self.change(|doc| {
            if doc.requests.iter().any(|r| r.id == rec.id) {
                return Err(self.backend(format!("request {} already exists", rec.id)));
            }
            doc.requests.push(StoredRequest::from_record(rec, machines));
            Ok(())
        })
    }

    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let location = self.location();
        self.read(|doc| doc.requests.iter().find(|r| r.id == id).map(|r| r.to_record(&location)))?
            .transpose()
    }

    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError> {
        let location = self.location();
        self.read(|doc| {
            doc.requests
                .iter()
                .find(|r| r.id == request_id)
                .map_or(Ok(Vec::new()), |r| r.to_machines(&location))
        })?
    }

    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        self.change(|doc| {
            let Some(r) = find(doc, &rec.id) else {
                return Ok(());
            };
            let new = StoredRequest::from_record(rec, &[]);
            if (&r.phase, &r.status, r.outstanding, &r.message, r.claimed)
                != (&new.phase, &new.status, new.outstanding, &new.message, new.claimed)
            {
                r.claimed = new.claimed;
                r.phase = new.phase;
                r.status = new.status;
                r.outstanding = new.outstanding;
                r.message = new.message;
                r.updated_at = new.updated_at;
            }
            upsert_machines(&mut r.machines, machines);
            Ok(())
        })
    }

    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError> {
        let location = self.location();
        self.read(|doc| {
            let mut stale: Vec<&StoredRequest> = doc.requests.iter().filter(|r| r.is_orphaned(before)).collect();
            stale.sort_by_key(|r| r.created_at);
            stale.into_iter().map(|r| r.to_record(&location)).collect()
        })?
    }

    fn provision_holders(&self, name: &str) -> Result<Vec<(String, Machine)>, StoreError> {
        let location = self.location();
        self.read(|doc| {
            let mut holders: Vec<(u64, String, &StoredMachine)> = doc
                .requests
                .iter()
                .filter(|r| r.kind == RequestKind::Provision.as_str())
                .flat_map(|r| {
                    r.machines
                        .iter()
                        .filter(|m| m.name == name)
                        .map(|m| (r.created_at, r.id.clone(), m))
                })
                .collect();
            holders.sort_by_key(|h| std::cmp::Reverse(h.0));
            holders.into_iter().map(|(_, id, m)| Ok((id, m.to_machine(&location)?))).collect()
        })?
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|doc| doc.kv.get(namespace).and_then(|m| m.get(key)).cloned())
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.change(|doc| {
            doc.kv
                .entry(namespace.to_string())
                .or_default()
                .insert(key.to_string(), value.to_string());
            Ok(())
        })
    }

    fn kv_insert_if_absent(&self, namespace: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        self.change(|doc| {
            let ns = doc.kv.entry(namespace.to_string()).or_default();
            if ns.contains_key(key) {
                return Ok(false);
            }
            ns.insert(key.to_string(), value.to_string());
            Ok(true)
        })
    }

    fn kv_delete_if_equals(&self, namespace: &str, key: &str, expected: &str) -> Result<bool, StoreError> {
        self.change(|doc| {
            let Some(ns) = doc.kv.get_mut(namespace) else {
                return Ok(false);
            };
            if ns.get(key).map(String::as_str) != Some(expected) {
                return Ok(false);
            }
            ns.remove(key);
            if ns.is_empty() {
                doc.kv.remove(namespace);
            }
            Ok(true)
        })
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.change(|doc| {
            if let Some(ns) = doc.kv.get_mut(namespace) {
                ns.remove(key);
                if ns.is_empty() {
                    doc.kv.remove(namespace);
                }
            }
            Ok(())
        })
    }

    fn kv_scan(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|doc| {
            doc.kv
                .get(namespace)
                .map(|ns| {
                    ns.range(prefix.to_string()..)
                        .take_while(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn prune_finished(&self, before: u64, limit: usize) -> Result<usize, StoreError> {
        self.change(|doc| {
            let mut victims: Vec<(u64, String)> = doc
                .requests
                .iter()
                .filter(|r| r.is_finished() && r.updated_at < before && super::document::releasable(doc, r))
                .map(|r| (r.updated_at, r.id.clone()))
                .collect();
            victims.sort();
            victims.truncate(limit);
            let gone: std::collections::HashSet<String> = victims.into_iter().map(|(_, id)| id).collect();
            doc.requests.retain(|r| !gone.contains(&r.id));
            Ok(gone.len())
        })
    }

    fn export(&self) -> Result<Document, StoreError> {
        self.read(|doc| {
            let mut doc = doc.clone();
            doc.schema_version = SCHEMA_VERSION;
            doc
        })
    }

    fn import(&self, doc: &Document) -> Result<(), StoreError> {
        super::check_import_version(&self.location(), doc)?;
        for r in &doc.requests {
            r.to_record(&self.location())?;
            r.to_machines(&self.location())?;
        }
        self.change(|current| {
            let kv: usize = current.kv.values().map(BTreeMap::len).sum();
            if !current.requests.is_empty() || kv > 0 {
                return Err(StoreError::NotEmpty {
                    location: self.location(),
                    requests: current.requests.len(),
                    kv,
                });
            }
            *current = doc.clone();
            Ok(())
        })
    }

    fn inspect(&self) -> Result<BackendReport, StoreError> {
        let _lock = self.lock(false)?;
        let files: &[&str] = match self.layout {
            JsonLayout::SingleFile => &[SINGLE],
            JsonLayout::SplitFiles => &[REQUESTS, MACHINES, KV],
        };
        let size = files
            .iter()
            .map(|f| std::fs::metadata(self.dir.join(f)).map(|m| m.len()).unwrap_or(0))
            .sum();
        let (version, problems) = match self.load() {
            Ok(doc) => (doc.schema_version, Vec::new()),
            Err(e) => (0, vec![e.to_string()]),
        };
        Ok(BackendReport {
            backend: "json",
            location: self.location(),
            schema_version: version,
            size_bytes: Some(size),
            problems,
        })
    }
}
