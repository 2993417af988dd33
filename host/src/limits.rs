//! The one table of guest limits: every limit, its default, its config key, its ceiling and
//! why it exists. Config can set a limit per guest (`guests.<name>.limits.<key>`), never
//! above the ceiling.

use std::time::Duration;

use serde::Deserialize;

/// One limit: config key, default, ceiling, unit and purpose.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec {
    /// Key under `guests.<name>.limits`.
    pub key: &'static str,
    /// Value when config says nothing.
    pub default: u64,
    /// Highest value config may set.
    pub ceiling: u64,
    /// Unit of the value.
    pub unit: &'static str,
    /// Why the limit exists.
    pub doc: &'static str,
}

/// Linear memory (all memories of the guest together).
pub const MEMORY: LimitSpec = LimitSpec {
    key: "memory_mib",
    default: 128,
    ceiling: 4096,
    unit: "MiB",
    doc: "memory a guest may grow to, at instantiation and after; past it growth fails and the call aborts",
};

/// The guest's own running time per call.
pub const TIMEOUT: LimitSpec = LimitSpec {
    key: "timeout_ms",
    default: 10_000,
    ceiling: 600_000,
    unit: "ms",
    doc: "the guest's own running time in one call (epoch deadline), not counting time it waits in host calls (cloud, store, commands)",
};

/// Wall time per call, host calls included.
pub const CALL_TIMEOUT: LimitSpec = LimitSpec {
    key: "call_timeout_ms",
    default: 200_000,
    ceiling: 600_000,
    unit: "ms",
    doc: "wall time of one guest call including its host calls; below HostFactory's HF_PROVIDER_ACTION_TIMEOUT (240-300 s), which abandons the script",
};

/// Size of one answer.
pub const ANSWER: LimitSpec = LimitSpec {
    key: "answer_kib",
    default: 16_384,
    ceiling: 262_144,
    unit: "KiB",
    doc: "text one answer carries across the boundary (ids, names, messages, attributes); a larger answer aborts the call",
};

/// Largest HostFactory input file read (`-f`). HostFactory's own inputs are a few KB to a
/// few MB (a getReturnRequests over 10,000 hosts is ~1 MB); a larger file is refused by name
/// (`INVALID_INPUT`) before it is parsed, so a runaway writer cannot make a call use
/// gigabytes.
pub const MAX_INPUT_BYTES: u64 = 16 << 20;

/// Largest config, templates or inventory file read: far above any real site's, small
/// enough that pointing a setting at a device or a huge file fails at once, named.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Largest guest `.wasm` file read (Python and JavaScript guests are 10-40 MB).
pub const MAX_WASM_BYTES: u64 = 256 << 20;

/// Bytes of log messages one guest instance may write in one call; the rest is dropped with
/// one line saying so (a guest logging in a loop wrote 787 MB in 3 s).
pub const GUEST_LOG_BYTES: usize = 1 << 20;

/// Longest one EC2 API attempt may take, response included: an endpoint that accepts the
/// connection and never answers fails the attempt (retried per IBM's retry keys) instead of
/// holding the call; the call as a whole is bounded by `call_timeout_ms`. Generous, since a
/// DescribeInstances over thousands of instances takes seconds on real AWS.
pub const EC2_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest one call to a cloud state store (DynamoDB) may take, its retries included: a
/// store endpoint that accepts the connection and never answers fails the call, named,
/// instead of holding HostFactory's call.
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest one attempt of such a call; a throttled or timed-out attempt is retried (up to
/// three attempts) within [`STORE_CALL_TIMEOUT`].
pub const STORE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);

/// How often the sweep prunes finished requests past the retention (a batch each time):
/// often enough to keep up with any real request rate, rarely enough that a store whose
/// pruning reads every request (DynamoDB's scan) does not pay for it on every poll.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The longest an admin's power command may run: `hfwasm power-run` kills it (and all it
/// started) at this age and records it failed, so a hung command frees its host.
pub const POWER_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

/// A power command recorded as running for longer than this has lost its `power-run`
/// (killed before it could record the outcome): its claim on the host is taken over and the
/// command counts as never started, so the next status call starts it again. Two commands
/// never run on one host at once: a live `power-run` reports within
/// [`POWER_COMMAND_TIMEOUT`] plus this margin.
pub const POWER_RUN_LOST_AFTER: Duration = Duration::from_secs(3600 + 120);

/// A power command claimed this long ago whose `power-run` has not yet recorded its start
/// never started (the call that claimed it was killed before it could start power-run):
/// the claim is given up and the command started again. power-run starts in milliseconds,
/// and one that starts later than this finds its claim gone and runs nothing.
pub const POWER_RUN_START_GRACE: Duration = Duration::from_secs(10);

/// How long the host waits for a site's `AWS_CREDENTIAL_SCRIPT` before the call fails
/// (`PROVIDER_UNAVAILABLE`, naming the script): a hung script must not hang HostFactory.
pub const CREDENTIAL_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Tables and instances.
pub const INSTANCES: LimitSpec = LimitSpec {
    key: "max_instances",
    default: 32,
    ceiling: 1000,
    unit: "instances",
    doc: "core instances a component may create (a component is a handful); bounds resource use at load",
};

/// Wasm stack (engine-wide).
pub const STACK: LimitSpec = LimitSpec {
    key: "stack_kib",
    default: 512,
    ceiling: 512,
    unit: "KiB",
    doc: "wasm stack per call; engine-wide (one engine serves every guest), so not settable per guest",
};

/// Most fuel a guest may be given per call.
pub const FUEL_CEILING: u64 = 1_000_000_000_000;

/// Every limit, for `--help` and docs.
pub const ALL: [LimitSpec; 6] = [MEMORY, TIMEOUT, CALL_TIMEOUT, ANSWER, INSTANCES, STACK];

/// Per-guest settings from config; absent = default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// See [`MEMORY`].
    pub memory_mib: Option<u64>,
    /// See [`TIMEOUT`].
    pub timeout_ms: Option<u64>,
    /// See [`CALL_TIMEOUT`].
    pub call_timeout_ms: Option<u64>,
    /// See [`ANSWER`].
    pub answer_kib: Option<u64>,
    /// Fuel per call (about one unit per wasm instruction); absent = no metering. A guest
    /// with fuel runs the same number of steps every time: deterministic runs and replay.
    pub fuel: Option<u64>,
    /// See [`INSTANCES`].
    pub max_instances: Option<u64>,
    /// Seed of the guest's random source (WASI `random` and `insecure`); absent = fresh
    /// randomness from the OS. With a seed the guest draws the same numbers on every run.
    pub random_seed: Option<u64>,
}

/// Limits applied to one guest's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Bytes of linear memory.
    pub memory_bytes: usize,
    /// The guest's own running time per call.
    pub timeout: Duration,
    /// Wall time per call, host calls included.
    pub call_timeout: Duration,
    /// Bytes of text in one answer.
    pub answer_bytes: usize,
    /// Fuel per call, when metered.
    pub fuel: Option<u64>,
    /// Core instances.
    pub max_instances: usize,
    /// Seed of the guest's random source, when it must be reproducible.
    pub random_seed: Option<u64>,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self::from_overrides(&LimitOverrides::default()).unwrap_or(GuestLimits {
            memory_bytes: 128 << 20,
            timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(200),
            answer_bytes: 16 << 20,
            fuel: None,
            max_instances: 32,
            random_seed: None,
        })
    }
}

impl GuestLimits {
    /// Applies config overrides; an out-of-range value is an error naming the key.
    pub fn from_overrides(o: &LimitOverrides) -> Result<Self, String> {
        let pick = |spec: &LimitSpec, v: Option<u64>| -> Result<u64, String> {
            let v = v.unwrap_or(spec.default);
            if v == 0 || v > spec.ceiling {
                return Err(format!(
                    "limits.{} = {v} is out of range: 1..={} {} ({})",
                    spec.key, spec.ceiling, spec.unit, spec.doc
                ));
            }
            Ok(v)
        };
        let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Self {
            memory_bytes: to_usize(pick(&MEMORY, o.memory_mib)?).saturating_mul(1 << 20),
            timeout: Duration::from_millis(pick(&TIMEOUT, o.timeout_ms)?),
            call_timeout: Duration::from_millis(pick(&CALL_TIMEOUT, o.call_timeout_ms)?),
            answer_bytes: to_usize(pick(&ANSWER, o.answer_kib)?).saturating_mul(1 << 10),
            fuel: match o.fuel {
                Some(f) if f == 0 || f > FUEL_CEILING => {
                    return Err(format!(
                        "limits.fuel = {f} is out of range: 1..={FUEL_CEILING} (units of work per call, about one per wasm instruction; leave it out for no metering)"
                    ));
                }
                f => f,
            },
            max_instances: to_usize(pick(&INSTANCES, o.max_instances)?),
            random_seed: o.random_seed,
        })
    }
}

/// Reads `path` as text, refusing a file larger than `max` bytes (or a device, a FIFO or
/// anything else that is not a regular file) without reading it: every file hfwasm reads
/// from a path it was given goes through here or [`read_capped_bytes`].
pub fn read_capped(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped_bytes(path, max)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}

/// [`read_capped`] for bytes.
pub fn read_capped_bytes(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} bytes is more than the {max} this file may have", meta.len()),
        ));
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while read is cut at the cap, then refused.
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("more than {max} bytes"),
        ));
    }
    Ok(out)
}

/// The longest one PostgreSQL statement may run, lock waits included, before the server
/// cancels it (`storage.sql_strategy.statement_timeout` sets it, 1..=3600 s): a store that
/// hangs fails the call with a named store error well before the call's own deadline.
pub const STORE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most entries one guest's kv namespace may hold (across calls): as many as one scan may
/// return, so a namespace never grows past what its guest can read back.
pub const KV_NAMESPACE_MAX_ENTRIES: usize = 100_000;

/// Most bytes (keys and values) one guest's kv namespace may hold across calls: a guest
/// writing its per-call maximum every call would otherwise fill the disk over a day.
pub const KV_NAMESPACE_MAX_BYTES: usize = 64 << 20;

/// The longest a call waits for the JSON store's file lock (held by another hfwasm process
/// for one read or write, milliseconds normally) before failing with a named store error.
pub const STORE_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_ceilings() {
        let d = GuestLimits::default();
        assert_eq!(d.memory_bytes, 128 << 20);
        assert_eq!(d.timeout, Duration::from_millis(10_000));
        assert_eq!(d.call_timeout, Duration::from_millis(200_000));
        let e = GuestLimits::from_overrides(&LimitOverrides {
            memory_mib: Some(10_000),
            ..Default::default()
        })
        .expect_err("above ceiling");
        assert!(e.contains("limits.memory_mib"), "{e}");
        let tight = GuestLimits::from_overrides(&LimitOverrides {
            timeout_ms: Some(200),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(tight.timeout, Duration::from_millis(200));
    }
}
