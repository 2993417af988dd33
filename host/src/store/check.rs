//! `hfwasm store check`: what a store holds and whether it is sound, from the backend's own
//! integrity check plus a consistency pass over everything it holds.

use serde::Serialize;

use super::{BackendReport, StateStore, StoreError, Summary};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StoreReport {
    /// Backend, location, size, schema and its own problems.
    #[serde(flatten)]
    pub backend: BackendReport,
    /// Counts and consistency problems.
    #[serde(flatten)]
    pub summary: Summary,
}

impl StoreReport {
    /// True when neither check found a problem.
    pub fn is_sound(&self) -> bool {
        self.backend.problems.is_empty() && self.summary.problems.is_empty()
    }

    /// The report for people, one fact per line.
    pub fn lines(&self) -> Vec<String> {
        let b = &self.backend;
        let s = &self.summary;
        let mut out = vec![
            format!("store:      {} {}", b.backend, b.location),
            format!(
                "schema:     version {} (this hfwasm knows up to {})",
                b.schema_version,
                super::SCHEMA_VERSION
            ),
            format!(
                "size:       {}",
                b.size_bytes
                    .map_or("unknown".to_string(), |n| format!("{:.1} KiB", n as f64 / 1024.0))
            ),
        ];
        let total: usize = s.requests.values().sum();
        out.push(format!("requests:   {total}"));
        for (k, n) in &s.requests {
            out.push(format!("  {k}: {n}"));
        }
        out.push(format!("machines:   {} rows", s.machines));
        for (state, n) in &s.open_machines {
            out.push(format!("  of open requests, {state}: {n}"));
        }
        out.push(format!(
            "unanswered: {} (accepted, never submitted; repaired by the sweep)",
            s.accepted
        ));
        out.push(format!("kv entries: {}", s.kv_entries));
        for p in b.problems.iter().chain(&s.problems) {
            out.push(format!("PROBLEM:    {p}"));
        }
        out
    }
}

/// Checks `store`.
pub fn check(store: &dyn StateStore) -> Result<StoreReport, StoreError> {
    let backend = store.inspect()?;
    let summary = store.export()?.summary(&backend.location);
    Ok(StoreReport { backend, summary })
}
