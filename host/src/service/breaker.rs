//! The circuit breaker (`provider.circuit_breaker`): after `failure_threshold` consecutive
//! failed provider calls the circuit opens, and requestMachines is refused at once without
//! touching the provider; once `recovery_timeout` has passed, one trial request is let
//! through (half open): success closes the circuit, failure opens it for another period.
//! Every HostFactory call is a new process, so the state lives in the store's kv, and it is
//! changed only with atomic inserts: concurrent processes lose no failure and never run two
//! trials at once.

use crate::domain::model::{AbortKind, ProviderError};
use crate::store::{StateStore, StoreError};

/// When the circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// Seconds the circuit stays open before one trial request is let through.
    pub recovery_secs: u64,
}

/// What the breaker says about a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Closed,
    /// Half open: this request is the one trial; its outcome closes or reopens the circuit.
    Trial,
    /// Open: refuse without calling the provider.
    Open {
        /// Consecutive failures recorded.
        failures: usize,
        /// When the circuit opened (or last reopened), epoch seconds.
        opened_at: u64,
        /// When a trial request will be let through, epoch seconds.
        retry_at: u64,
    },
}

/// Whether a provider failure says the provider is unhealthy (and so counts): it was
/// unreachable, or its guest ran out of time or crashed. Capacity, bad templates, bad input
/// and denials are answers from a working provider and do not count.
pub fn counts_as_failure(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Unavailable(_)
            | ProviderError::Aborted {
                kind: AbortKind::Timeout | AbortKind::Trap | AbortKind::Memory,
                ..
            }
    )
}

/// What a probe of a half-open circuit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The provider answered: the circuit is closed.
    Closed,
    /// It did not: open for another recovery period (the failure).
    Reopened(String),
}

const OPENED_AT: &str = "opened-at";
const TRIAL: &str = "trial";
const FAILURE: &str = "failure/";

/// One provider's breaker over the store.
pub struct Breaker<'a> {
    store: &'a dyn StateStore,
    namespace: String,
    policy: BreakerPolicy,
}

impl<'a> Breaker<'a> {
    /// The breaker of `provider` in provider instance `instance`.
    pub fn new(store: &'a dyn StateStore, instance: &str, provider: &str, policy: BreakerPolicy) -> Self {
        Self {
            store,
            namespace: crate::store::namespaces::breaker(instance, provider),
            policy,
        }
    }

    fn secs(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.store.kv_get(&self.namespace, key)?.and_then(|v| v.parse().ok()))
    }

    fn failures(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.store.kv_scan(&self.namespace, FAILURE)
    }

    /// Whether a request may go to the provider at `now`; claims the trial when half open.
    pub fn admit(&self, now: u64) -> Result<Admission, StoreError> {
        let Some(opened_at) = self.secs(OPENED_AT)? else {
            return Ok(Admission::Closed);
        };
        let open = |retry_at: u64| -> Result<Admission, StoreError> {
            Ok(Admission::Open {
                failures: self.failures()?.len(),
                opened_at,
                retry_at,
            })
        };
        let retry_at = opened_at.saturating_add(self.policy.recovery_secs);
        if now < retry_at {
            return open(retry_at);
        }
        // Half open: one trial. A trial older than a recovery period belongs to a process
        // that died before recording its outcome, so it is taken over.
        if let Some(old) = self.store.kv_get(&self.namespace, TRIAL)? {
            let started: u64 = old.parse().unwrap_or(0);
            if now < started.saturating_add(self.policy.recovery_secs) {
                return open(started.saturating_add(self.policy.recovery_secs));
            }
            self.store.kv_delete_if_equals(&self.namespace, TRIAL, &old)?;
        }
        if self.store.kv_insert_if_absent(&self.namespace, TRIAL, &now.to_string())? {
            Ok(Admission::Trial)
        } else {
            open(now.saturating_add(self.policy.recovery_secs))
        }
    }

    /// The circuit's state at `now`, without claiming the trial (what a placement policy is
    /// told; [`Breaker::admit`] still decides).
    pub fn circuit(&self, now: u64) -> Result<crate::policy::placement::Circuit, StoreError> {
        use crate::policy::placement::Circuit;
        let Some(opened_at) = self.secs(OPENED_AT)? else {
            return Ok(Circuit::Closed);
        };
        if now < opened_at.saturating_add(self.policy.recovery_secs) {
            return Ok(Circuit::Open);
        }
        match self.secs(TRIAL)? {
            Some(started) if now < started.saturating_add(self.policy.recovery_secs) => Ok(Circuit::Open),
            _ => Ok(Circuit::HalfOpen),
        }
    }

    /// A call that reached a healthy provider: the circuit closes and the count restarts.
    pub fn record_success(&self) -> Result<(), StoreError> {
        let failures = self.failures()?;
        let opened = self.store.kv_get(&self.namespace, OPENED_AT)?;
        if failures.is_empty() && opened.is_none() {
            return Ok(());
        }
        for (key, _) in failures {
            self.store.kv_delete(&self.namespace, &key)?;
        }
        if opened.is_some() {
            tracing::info!(breaker = %self.namespace, "provider answered again: circuit closed");
        }
        self.store.kv_delete(&self.namespace, OPENED_AT)?;
        self.store.kv_delete(&self.namespace, TRIAL)
    }

    /// The reconciler's probe (`hfwasm serve`): when the circuit is due a trial, `probe`
    /// (a call that reaches the cloud: a listing of the provider's machines) is the trial
    /// instead of a HostFactory request, so a provider that is back is known before the next
    /// request and a dead one costs no request. Nothing happens while the circuit is closed
    /// (real calls feed it) or not yet due. Returns the outcome when a probe ran.
    pub fn probe<T>(&self, now: u64, probe: impl FnOnce() -> Result<T, ProviderError>) -> Result<Option<ProbeOutcome>, StoreError> {
        if self.admit(now)? != Admission::Trial {
            return Ok(None);
        }
        Ok(Some(match probe() {
            Ok(_) => {
                self.record_success()?;
                ProbeOutcome::Closed
            }
            // The guest could not even be loaded: nothing learnt about the cloud; the trial
            // is given back for the next call to take.
            Err(ProviderError::Aborted { kind: AbortKind::Load, .. }) => {
                self.release_trial()?;
                return Ok(None);
            }
            Err(e) if counts_as_failure(&e) => {
                self.record_failure(now, true, &format!("probe: {e}"))?;
                ProbeOutcome::Reopened(e.to_string())
            }
            // The provider answered (a refusal is an answer): it is up.
            Err(_) => {
                self.record_success()?;
                ProbeOutcome::Closed
            }
        }))
    }

    /// Gives the half-open trial back unused (its request failed before learning anything
    /// about the provider), so the next request can be the trial.
    pub fn release_trial(&self) -> Result<(), StoreError> {
        self.store.kv_delete(&self.namespace, TRIAL)
    }

    /// A failed call (see [`counts_as_failure`]) at `now`; `trial` when it was the
    /// half-open trial. Opens (or reopens) the circuit when due; returns whether it is open.
    pub fn record_failure(&self, now: u64, trial: bool, error: &str) -> Result<bool, StoreError> {
        // One key per failure: concurrent processes add theirs without losing any.
        let key = format!("{FAILURE}{now:020}-{}", uuid::Uuid::new_v4());
        self.store.kv_insert_if_absent(&self.namespace, &key, error)?;
        if trial {
            self.store.kv_set(&self.namespace, OPENED_AT, &now.to_string())?;
            self.store.kv_delete(&self.namespace, TRIAL)?;
            tracing::warn!(breaker = %self.namespace, error, "trial request failed: circuit open again");
            return Ok(true);
        }
        let failures = self.failures()?.len();
        if failures >= self.policy.failure_threshold as usize {
            if self.store.kv_insert_if_absent(&self.namespace, OPENED_AT, &now.to_string())? {
                tracing::warn!(breaker = %self.namespace, failures, error, "circuit open: requests are refused until the recovery timeout");
            }
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn a_probe_is_the_trial_of_a_due_circuit_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("store");
        let b = Breaker::new(
            &store,
            "inst",
            "aws",
            BreakerPolicy {
                failure_threshold: 1,
                recovery_secs: 100,
            },
        );
        let down = || Err::<(), _>(ProviderError::Unavailable("no route".into()));
        assert_eq!(b.probe(1_000, down).expect("closed"), None, "a closed circuit is not probed");
        assert!(b.record_failure(1_000, false, "down").expect("open"));
        assert_eq!(b.probe(1_050, down).expect("open"), None, "not due yet");
        assert!(matches!(b.probe(1_100, down).expect("due"), Some(ProbeOutcome::Reopened(_))));
        assert_eq!(b.probe(1_150, || Ok(())).expect("reopened"), None, "open for another period");
        let unloadable = || {
            Err::<(), _>(ProviderError::Aborted {
                kind: AbortKind::Load,
                provider: "aws".into(),
                operation: "load".into(),
                message: "no guest".into(),
            })
        };
        assert_eq!(b.probe(1_200, unloadable).expect("learnt nothing"), None);
        assert_eq!(b.admit(1_200).expect("admit"), Admission::Trial, "the trial was given back");
        b.release_trial().expect("release");
        assert_eq!(b.probe(1_200, || Ok(())).expect("due again"), Some(ProbeOutcome::Closed));
        assert_eq!(b.admit(1_201).expect("admit"), Admission::Closed);
    }

    #[test]
    fn opens_after_the_threshold_half_opens_and_closes_on_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db")).expect("store");
        let policy = BreakerPolicy {
            failure_threshold: 3,
            recovery_secs: 100,
        };
        let b = Breaker::new(&store, "inst", "aws", policy);
        assert_eq!(b.admit(1_000).expect("admit"), Admission::Closed);
        assert!(!b.record_failure(1_000, false, "down").expect("1"));
        assert!(!b.record_failure(1_001, false, "down").expect("2"));
        // A success in between restarts the count: failures must be consecutive.
        b.record_success().expect("ok");
        assert!(!b.record_failure(1_002, false, "down").expect("1"));
        assert!(!b.record_failure(1_003, false, "down").expect("2"));
        assert!(b.record_failure(1_004, false, "down").expect("3"));
        // A second breaker over the same store (another process) sees it open.
        let other = Breaker::new(&store, "inst", "aws", policy);
        assert_eq!(
            other.admit(1_050).expect("admit"),
            Admission::Open {
                failures: 3,
                opened_at: 1_004,
                retry_at: 1_104
            }
        );
        // Another provider's breaker is its own.
        assert_eq!(
            Breaker::new(&store, "inst", "azure", policy).admit(1_050).expect("admit"),
            Admission::Closed
        );
        // Half open: exactly one trial, whoever asks first.
        assert_eq!(b.admit(1_104).expect("admit"), Admission::Trial);
        assert!(matches!(other.admit(1_105).expect("admit"), Admission::Open { .. }));
        // The trial fails: open for another period from now.
        assert!(b.record_failure(1_110, true, "still down").expect("reopen"));
        assert_eq!(
            other.admit(1_150).expect("admit"),
            Admission::Open {
                failures: 4,
                opened_at: 1_110,
                retry_at: 1_210
            }
        );
        // A trial whose process died is taken over after a recovery period.
        assert_eq!(other.admit(1_210).expect("admit"), Admission::Trial);
        assert!(matches!(b.admit(1_250).expect("admit"), Admission::Open { .. }));
        assert_eq!(b.admit(1_310).expect("admit"), Admission::Trial);
        b.record_success().expect("closed");
        assert_eq!(other.admit(1_311).expect("admit"), Admission::Closed);
        assert!(!other.record_failure(1_312, false, "blip").expect("1 of 3"));
    }

    #[test]
    fn only_health_failures_count() {
        assert!(counts_as_failure(&ProviderError::Unavailable("timeout".into())));
        assert!(counts_as_failure(&ProviderError::Aborted {
            kind: AbortKind::Timeout,
            provider: "aws".into(),
            operation: "request-machines".into(),
            message: "deadline".into()
        }));
        assert!(!counts_as_failure(&ProviderError::Capacity("none left".into())));
        assert!(!counts_as_failure(&ProviderError::InvalidTemplate("t".into())));
        assert!(!counts_as_failure(&ProviderError::Denied("region".into())));
    }
}
