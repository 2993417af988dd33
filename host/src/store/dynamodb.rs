//! The seed's `storage: {type: dynamodb}`: state in four DynamoDB tables named from
//! `table_prefix` (`<prefix>-requests`, `<prefix>-hosts`, `<prefix>-kv`, `<prefix>-meta`),
//! created on first use with on-demand capacity, shared by every installation pointed at
//! them.
//!
//! A request is one item (`id`, page 0) holding its record and machines, so every change of
//! a request is one conditional write: atomic, and a writer that lost a race (the item's
//! `ver` moved on since it read it) reads again and reapplies its change, so two processes
//! updating one request never lose each other's machines. A request whose machines outgrow
//! one item (DynamoDB's 400 KB) spills into pages 1, 2, ... written together with page 0 in
//! one transaction. kv entries are items keyed (namespace, key), with insert-if-absent and
//! delete-if-equals as conditional writes. Reads are strongly consistent.
//!
//! `<prefix>-hosts` indexes host names: one item per (name, request) written before the
//! request first records a machine of that name, so the holders of a host (returns, reclaim
//! checks) are one query per name, not a scan. An index item whose request no longer holds
//! the name is harmless: holders are read from the requests themselves.
//!
//! What costs a scan of the requests table (finished requests are pruned after
//! `retention_hours`, so it stays small): the sweep's stale requests and pruning. Import writes in batches, not one
//! transaction (DynamoDB's transactions hold 100 items): an import that fails part way
//! leaves a store that refuses a second import; empty the tables and run it again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb as sdk;
use sdk::error::{ProvideErrorMetadata, SdkError};
use sdk::types::{AttributeValue, KeysAndAttributes, Put, TransactGetItem, TransactWriteItem, WriteRequest};

use super::document::{StoredMachine, StoredRequest, releasable, upsert_machines};
use super::{BackendReport, Document, RequestRecord, SCHEMA_VERSION, StateStore, StoreError};
use crate::awsconn::root_cause as cause;
use crate::domain::model::Machine;

/// One table to create: name, hash key, and range key with its type.
type TableShape<'a> = (&'a str, &'a str, Option<(&'a str, sdk::types::ScalarAttributeType)>);

/// Connection settings, from the seed's `storage.dynamodb` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoSettings {
    /// `table_prefix`: tables are `<prefix>-requests`, `<prefix>-kv`, `<prefix>-meta`.
    pub table_prefix: String,
    /// `region`.
    pub region: String,
    /// `endpoint_url` (a VPC endpoint, or an emulator); None = AWS's own, or the SDK's
    /// `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// `profile`: the AWS profile for credentials (else the SDK's standard chain).
    pub profile: Option<String>,
    /// `backup_enabled`: point-in-time recovery turned on for the tables.
    pub backup: bool,
    /// Longest wait for a connection to be set up.
    pub connect_timeout: Duration,
}

impl DynamoSettings {
    /// `dynamodb://<region>/<prefix>-*` (and the endpoint when not AWS's own).
    pub fn location(&self) -> String {
        match &self.endpoint_url {
            Some(e) => format!("dynamodb://{}/{}-* at {e}", self.region, self.table_prefix),
            None => format!("dynamodb://{}/{}-*", self.region, self.table_prefix),
        }
    }
}

/// Bytes of machine JSON one item holds; DynamoDB's item limit is 400 KB, the rest is the
/// record and attribute names.
const PAGE_BYTES: usize = 300_000;
/// Pages one request may have: one transaction writes them all (100 items, 4 MB at most).
const MAX_PAGES: usize = 12;
/// Times a write that lost a race to another writer is read and tried again.
const MAX_CONFLICT_RETRIES: usize = 50;
/// Writes of a batched update in flight at once.
const WRITES_IN_FLIGHT: usize = 16;
/// Keys per BatchGetItem (DynamoDB's limit).
const BATCH_GET: usize = 100;
/// Items per BatchWriteItem (DynamoDB's limit).
const BATCH_WRITE: usize = 25;
/// How long a table being created may take to become ACTIVE.
const TABLE_ACTIVE_WAIT: Duration = Duration::from_secs(120);

/// DynamoDB-backed [`StateStore`].
pub struct DynamoStore {
    settings: DynamoSettings,
    rt: tokio::runtime::Runtime,
    client: sdk::Client,
    requests: String,
    hosts: String,
    kv: String,
    meta: String,
}

/// A request as stored: its record with all machines, the item version, and its pages.
#[derive(Debug, Clone)]
struct Loaded {
    req: StoredRequest,
    ver: u64,
    pages: usize,
}

/// Why a write did not happen.
enum WriteFailure {
    /// Another writer changed the request first (or, for an insert, it exists).
    Conflict,
    /// Anything else.
    Error(StoreError),
}

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, k: &str) -> Option<u64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

fn request_key(id: &str, page: usize) -> Item {
    HashMap::from([("id".to_string(), s(id)), ("pg".to_string(), n(page as u64))])
}

/// The record part of `r` (no machines), as stored in the `rec` attribute.
fn record_json(r: &StoredRequest) -> String {
    let mut head = r.clone();
    head.machines = Vec::new();
    serde_json::to_string(&head).unwrap_or_default()
}

/// Machines split into pages of at most [`PAGE_BYTES`] of JSON each (at least one page).
fn paginate(machines: &[StoredMachine]) -> Vec<String> {
    let mut pages = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut bytes = 0;
    for m in machines {
        let one = serde_json::to_string(m).unwrap_or_default();
        if bytes + one.len() > PAGE_BYTES && !current.is_empty() {
            pages.push(format!("[{}]", current.join(",")));
            current.clear();
            bytes = 0;
        }
        bytes += one.len() + 1;
        current.push(one);
    }
    pages.push(format!("[{}]", current.join(",")));
    pages
}

/// The same request state, `updated_at` aside: a status call that found nothing new
/// rewrites nothing (as the SQL stores compare).
fn same_state(a: &StoredRequest, b: &StoredRequest) -> bool {
    a.phase == b.phase && a.status == b.status && a.outstanding == b.outstanding && a.message == b.message && a.claimed == b.claimed
}

impl DynamoStore {
    /// Connects, creates the tables if absent (on-demand capacity; point-in-time recovery
    /// when `backup`), and checks the schema version.
    pub fn open(settings: &DynamoSettings) -> Result<Self, StoreError> {
        let location = settings.location();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend {
                location: location.clone(),
                message: format!("cannot start the I/O runtime: {e}"),
            })?;
        let http = crate::awsconn::http_client(settings.endpoint_url.as_deref(), None).map_err(|message| StoreError::Connect {
            location: location.clone(),
            setting: "storage.dynamodb.endpoint_url".into(),
            message,
        })?;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .operation_attempt_timeout(crate::limits::STORE_ATTEMPT_TIMEOUT)
            .operation_timeout(crate::limits::STORE_CALL_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(p) = &settings.profile {
            loader = loader.profile_name(p);
        }
        let conf = rt.block_on(loader.load());
        let p = &settings.table_prefix;
        let store = Self {
            settings: settings.clone(),
            client: sdk::Client::new(&conf),
            rt,
            requests: format!("{p}-requests"),
            hosts: format!("{p}-hosts"),
            kv: format!("{p}-kv"),
            meta: format!("{p}-meta"),
        };
        store.rt.block_on(store.prepare())?;
        Ok(store)
    }

    fn location(&self) -> String {
        self.settings.location()
    }

    /// A failed SDK call as a store error naming the operation and what to check.
    fn sdk_error<E, R>(&self, op: &str, e: &SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let location = self.location();
        let (target, net_setting) = match &self.settings.endpoint_url {
            Some(u) => (u.clone(), "storage.dynamodb.endpoint_url"),
            None => (format!("DynamoDB in region {}", self.settings.region), "storage.dynamodb.region"),
        };
        let credentials = "storage.dynamodb.profile";
        match e {
            SdkError::ServiceError(_) => {
                let code = e.code().unwrap_or("error");
                let msg = e.message().unwrap_or("");
                match code {
                    "UnrecognizedClientException" | "InvalidSignatureException" | "AccessDeniedException" | "ExpiredTokenException" => {
                        StoreError::Connect {
                            location,
                            setting: credentials.into(),
                            message: format!(
                                "{op}: {code}: {msg}; check the AWS credentials (environment, profile, instance role) and that their IAM policy allows it"
                            ),
                        }
                    }
                    _ => StoreError::Backend {
                        location,
                        message: format!("{op}: {code}: {msg}"),
                    },
                }
            }
            SdkError::TimeoutError(_) => StoreError::Connect {
                location,
                setting: net_setting.into(),
                message: format!("{op}: no answer from {target} in time; check the endpoint and the network"),
            },
            SdkError::DispatchFailure(d) => StoreError::Connect {
                location,
                setting: net_setting.into(),
                message: format!(
                    "{op}: cannot reach {target}: {}",
                    d.as_connector_error().map_or_else(|| "connection failed".to_string(), |c| cause(c))
                ),
            },
            SdkError::ConstructionFailure(_) => StoreError::Connect {
                location,
                setting: credentials.into(),
                message: format!(
                    "{op}: {}; check the AWS credentials (environment, profile, instance role)",
                    cause(e)
                ),
            },
            _ => StoreError::Backend {
                location,
                message: format!("{op}: {}", cause(e)),
            },
        }
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            location: self.location(),
            message,
        }
    }

    fn build_error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            location: self.location(),
            message: format!("cannot build the request: {e}"),
        }
    }

    /// Reads the schema version, creating the tables first when they do not exist.
    async fn prepare(&self) -> Result<(), StoreError> {
        let meta = match self.read_meta().await {
            Ok(m) => m,
            Err(e) if e.to_string().contains("ResourceNotFoundException") => {
                self.create_tables().await?;
                None
            }
            Err(e) => return Err(e),
        };
        let meta = match meta {
            Some(m) => m,
            None => {
                // First use: one writer records the version; the others read it.
                let item = HashMap::from([("id".to_string(), s("schema")), ("version".to_string(), n(SCHEMA_VERSION as u64))]);
                let put = self
                    .client
                    .put_item()
                    .table_name(&self.meta)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(#id)")
                    .expression_attribute_names("#id", "id")
                    .send()
                    .await;
                if let Err(e) = put
                    && e.code() != Some("ConditionalCheckFailedException")
                {
                    return Err(self.sdk_error("PutItem (schema version)", &e));
                }
                self.read_meta()
                    .await?
                    .ok_or_else(|| self.corrupt("the schema version item vanished right after it was written".into()))?
            }
        };
        let found = get_n(&meta, "version").and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                location: self.location(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        if self.settings.backup && meta.get("pitr").and_then(|v| v.as_bool().ok()) != Some(&true) {
            self.enable_backups().await?;
        }
        Ok(())
    }

    async fn read_meta(&self) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.meta)
            .key("id", s("schema"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_error("GetItem (schema version)", &e))?;
        Ok(out.item().cloned())
    }

    /// Creates the three tables (another process creating them at the same time is fine)
    /// and waits until they are ACTIVE.
    async fn create_tables(&self) -> Result<(), StoreError> {
        use sdk::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
        let tables: [TableShape<'_>; 4] = [
            (&self.requests, "id", Some(("pg", ScalarAttributeType::N))),
            (&self.hosts, "name", Some(("rid", ScalarAttributeType::S))),
            (&self.kv, "ns", Some(("k", ScalarAttributeType::S))),
            (&self.meta, "id", None),
        ];
        for (table, hash, range) in &tables {
            tracing::info!(table, "creating DynamoDB table (on-demand capacity)");
            let mut req = self
                .client
                .create_table()
                .table_name(*table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*hash)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| self.build_error(e))?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*hash)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(|e| self.build_error(e))?,
                );
            if let Some((name, kind)) = range {
                req = req
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(*name)
                            .attribute_type(kind.clone())
                            .build()
                            .map_err(|e| self.build_error(e))?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(*name)
                            .key_type(KeyType::Range)
                            .build()
                            .map_err(|e| self.build_error(e))?,
                    );
            }
            match req.send().await {
                Ok(_) => {}
                Err(e) if e.code() == Some("ResourceInUseException") => {}
                Err(e) => {
                    return Err(StoreError::Connect {
                        location: self.location(),
                        setting: "storage.dynamodb.table_prefix".into(),
                        message: format!(
                            "table {table} does not exist and cannot be created (create it, or allow dynamodb:CreateTable): {}",
                            self.sdk_error("CreateTable", &e)
                        ),
                    });
                }
            }
        }
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_WAIT;
        for (table, _, _) in &tables {
            loop {
                let out = self
                    .client
                    .describe_table()
                    .table_name(*table)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("DescribeTable", &e))?;
                if out.table().and_then(|t| t.table_status()) == Some(&sdk::types::TableStatus::Active) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(StoreError::Backend {
                        location: self.location(),
                        message: format!("table {table} is not ACTIVE {} s after it was created", TABLE_ACTIVE_WAIT.as_secs()),
                    });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Turns point-in-time recovery on for the tables (`backup_enabled: true`) and records
    /// that it is on, so later opens make no call for it.
    async fn enable_backups(&self) -> Result<(), StoreError> {
        let spec = sdk::types::PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(|e| self.build_error(e))?;
        for table in [&self.requests, &self.hosts, &self.kv, &self.meta] {
            self.client
                .update_continuous_backups()
                .table_name(table)
                .point_in_time_recovery_specification(spec.clone())
                .send()
                .await
                .map_err(|e| StoreError::Connect {
                    location: self.location(),
                    setting: "storage.dynamodb.backup_enabled".into(),
                    message: format!(
                        "cannot turn point-in-time recovery on for {table} (allow dynamodb:UpdateContinuousBackups, or turn it on yourself and set backup_enabled false): {}",
                        self.sdk_error("UpdateContinuousBackups", &e)
                    ),
                })?;
            tracing::info!(table, "point-in-time recovery on");
        }
        self.client
            .update_item()
            .table_name(&self.meta)
            .key("id", s("schema"))
            .update_expression("SET #pitr = :t")
            .expression_attribute_names("#pitr", "pitr")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(|e| self.sdk_error("UpdateItem (schema)", &e))?;
        Ok(())
    }

    /// Page items of `r` (page 0 with the record and version `ver`).
    fn request_items(&self, r: &StoredRequest, ver: u64) -> Result<Vec<Item>, StoreError> {
        let chunks = paginate(&r.machines);
        if chunks.len() > MAX_PAGES {
            return Err(StoreError::Backend {
                location: self.location(),
                message: format!(
                    "request {} holds {} machines, more than one DynamoDB transaction can write ({MAX_PAGES} items of {PAGE_BYTES} bytes)",
                    r.id,
                    r.machines.len()
                ),
            });
        }
        let pages = chunks.len();
        Ok(chunks
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let mut item = request_key(&r.id, i);
                item.insert("kind".into(), s(&r.kind));
                item.insert("m".into(), AttributeValue::S(m));
                if i == 0 {
                    item.insert("rec".into(), AttributeValue::S(record_json(r)));
                    item.insert("ver".into(), n(ver));
                    item.insert("pages".into(), n(pages as u64));
                    item.insert("created".into(), n(r.created_at));
                }
                item
            })
            .collect())
    }

    /// Index items for the host names of `new` that `before` did not hold, written before
    /// the request itself so that a request never holds a name the index lacks.
    async fn index_hosts(&self, before: Option<&StoredRequest>, new: &StoredRequest) -> Result<(), StoreError> {
        if new.kind != "provision" {
            return Ok(());
        }
        let known: HashSet<&str> = before
            .map(|b| b.machines.iter().map(|m| m.name.as_str()).collect())
            .unwrap_or_default();
        let mut fresh: Vec<&str> = new
            .machines
            .iter()
            .map(|m| m.name.as_str())
            .filter(|n| !n.is_empty() && !known.contains(n))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        let items = fresh
            .into_iter()
            .map(|name| HashMap::from([("name".to_string(), s(name)), ("rid".to_string(), s(&new.id))]))
            .collect();
        self.batch_put(&self.hosts, items).await
    }

    /// Writes `new` over the stored version `old` (None: inserts, refused if it exists),
    /// indexing its new host names first.
    async fn write(&self, old: Option<(u64, usize)>, before: Option<&StoredRequest>, new: &StoredRequest) -> Result<(), WriteFailure> {
        self.index_hosts(before, new).await.map_err(WriteFailure::Error)?;
        let ver = old.map_or(1, |(v, _)| v + 1);
        let items = self.request_items(new, ver).map_err(WriteFailure::Error)?;
        let old_pages = old.map_or(0, |(_, p)| p);
        let (condition, values) = match old {
            None => ("attribute_not_exists(#id)", HashMap::new()),
            Some((v, _)) => ("#ver = :v", HashMap::from([(":v".to_string(), n(v))])),
        };
        let names = match old {
            None => HashMap::from([("#id".to_string(), "id".to_string())]),
            Some(_) => HashMap::from([("#ver".to_string(), "ver".to_string())]),
        };
        if items.len() == 1 && old_pages <= 1 {
            let mut put = self
                .client
                .put_item()
                .table_name(&self.requests)
                .set_item(items.into_iter().next())
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names));
            if !values.is_empty() {
                put = put.set_expression_attribute_values(Some(values));
            }
            return match put.send().await {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(WriteFailure::Conflict),
                Err(e) => Err(WriteFailure::Error(self.sdk_error("PutItem (request)", &e))),
            };
        }
        let mut actions = Vec::new();
        let new_pages = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let mut put = Put::builder().table_name(&self.requests).set_item(Some(item));
            if i == 0 {
                put = put
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names.clone()));
                if !values.is_empty() {
                    put = put.set_expression_attribute_values(Some(values.clone()));
                }
            }
            let put = put.build().map_err(|e| WriteFailure::Error(self.build_error(e)))?;
            actions.push(TransactWriteItem::builder().put(put).build());
        }
        for page in new_pages..old_pages {
            let del = sdk::types::Delete::builder()
                .table_name(&self.requests)
                .set_key(Some(request_key(&new.id, page)))
                .build()
                .map_err(|e| WriteFailure::Error(self.build_error(e)))?;
            actions.push(TransactWriteItem::builder().delete(del).build());
        }
        match self.client.transact_write_items().set_transact_items(Some(actions)).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("TransactionCanceledException" | "TransactionConflictException")) => {
                let reasons: Vec<String> = match e.as_service_error() {
                    Some(sdk::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => c
                        .cancellation_reasons()
                        .iter()
                        .filter_map(|r| r.code().map(str::to_string))
                        .filter(|c| c != "None")
                        .collect(),
                    _ => Vec::new(),
                };
                if reasons.iter().all(|r| r == "ConditionalCheckFailed" || r == "TransactionConflict") {
                    Err(WriteFailure::Conflict)
                } else {
                    Err(WriteFailure::Error(StoreError::Backend {
                        location: self.location(),
                        message: format!("TransactWriteItems (request {}): cancelled: {}", new.id, reasons.join(", ")),
                    }))
                }
            }
            Err(e) => Err(WriteFailure::Error(self.sdk_error("TransactWriteItems (request)", &e))),
        }
    }

    /// Parses a page-0 item: the record, its version and page count, and its machines.
    fn parse_head(&self, item: &Item) -> Result<Loaded, StoreError> {
        let id = get_s(item, "id").unwrap_or("?").to_string();
        let rec = get_s(item, "rec").ok_or_else(|| self.corrupt(format!("request {id}: no record")))?;
        let mut req: StoredRequest =
            serde_json::from_str(rec).map_err(|e| self.corrupt(format!("request {id}: unreadable record: {e}")))?;
        req.machines = self.parse_machines(&id, item)?;
        Ok(Loaded {
            req,
            ver: get_n(item, "ver").unwrap_or(0),
            pages: get_n(item, "pages").and_then(|p| usize::try_from(p).ok()).unwrap_or(1),
        })
    }

    fn parse_machines(&self, id: &str, item: &Item) -> Result<Vec<StoredMachine>, StoreError> {
        match get_s(item, "m") {
            None => Ok(Vec::new()),
            Some(m) => serde_json::from_str(m).map_err(|e| self.corrupt(format!("request {id}: unreadable machines: {e}"))),
        }
    }

    /// The stored requests `ids` (absent ones left out), each read whole and consistent.
    async fn load(&self, ids: &[String]) -> Result<HashMap<String, Loaded>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        let unique: Vec<&String> = {
            let mut seen = HashSet::new();
            ids.iter().filter(|i| seen.insert(i.as_str())).collect()
        };
        let mut multi = Vec::new();
        for chunk in unique.chunks(BATCH_GET) {
            let mut keys: Vec<Item> = chunk.iter().map(|id| request_key(id, 0)).collect();
            while !keys.is_empty() {
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| self.build_error(e))?;
                let got = self
                    .client
                    .batch_get_item()
                    .request_items(&self.requests, ka)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("BatchGetItem (requests)", &e))?;
                for item in got.responses().and_then(|r| r.get(&self.requests)).into_iter().flatten() {
                    let l = self.parse_head(item)?;
                    if l.pages > 1 {
                        multi.push((l.req.id.clone(), l.pages));
                    } else {
                        out.insert(l.req.id.clone(), l);
                    }
                }
                keys = got
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.requests))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
                if !keys.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        for (id, pages) in multi {
            if let Some(l) = self.load_paged(&id, pages).await? {
                out.insert(id, l);
            }
        }
        Ok(out)
    }

    /// A request of several pages, all read in one transaction (never half an update).
    async fn load_paged(&self, id: &str, pages: usize) -> Result<Option<Loaded>, StoreError> {
        let mut pages = pages;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let gets = (0..pages)
                .map(|p| {
                    sdk::types::Get::builder()
                        .table_name(&self.requests)
                        .set_key(Some(request_key(id, p)))
                        .build()
                        .map(|g| TransactGetItem::builder().get(g).build())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.build_error(e))?;
            let got = match self.client.transact_get_items().set_transact_items(Some(gets)).send().await {
                Ok(g) => g,
                Err(e) if matches!(e.code(), Some("TransactionCanceledException" | "TransactionConflictException")) => continue,
                Err(e) => return Err(self.sdk_error("TransactGetItems (request)", &e)),
            };
            let items: Vec<Option<&Item>> = got.responses().iter().map(|r| r.item()).collect();
            let Some(Some(head)) = items.first() else {
                return Ok(None);
            };
            let mut l = self.parse_head(head)?;
            if l.pages != pages {
                // It grew or shrank between the two reads: read again with the new count.
                pages = l.pages;
                continue;
            }
            for item in items.iter().skip(1) {
                let item = item.ok_or_else(|| self.corrupt(format!("request {id}: a page is missing")))?;
                l.req.machines.extend(self.parse_machines(id, item)?);
            }
            return Ok(Some(l));
        }
        Err(StoreError::Backend {
            location: self.location(),
            message: format!("request {id}: could not read a consistent copy after {MAX_CONFLICT_RETRIES} tries"),
        })
    }

    /// Every item of `table` (consistent scan), with only `projection` when given.
    async fn scan_all(&self, table: &str, projection: Option<&[&str]>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some(attrs) = projection {
                // Every name through a placeholder: some are DynamoDB reserved words.
                let names: Vec<String> = (0..attrs.len()).map(|i| format!("#p{i}")).collect();
                req = req.projection_expression(names.join(", "));
                for (placeholder, attr) in names.iter().zip(attrs) {
                    req = req.expression_attribute_names(placeholder, *attr);
                }
            }
            let page = req.send().await.map_err(|e| self.sdk_error("Scan", &e))?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Every request's record (page 0 only, without machines).
    async fn records(&self) -> Result<Vec<(StoredRequest, u64, usize)>, StoreError> {
        let items = self.scan_all(&self.requests, Some(&["id", "pg", "rec", "ver", "pages"])).await?;
        let mut out = Vec::new();
        for item in items.iter().filter(|i| get_n(i, "pg") == Some(0)) {
            let id = get_s(item, "id").unwrap_or("?");
            let rec = get_s(item, "rec").ok_or_else(|| self.corrupt(format!("request {id}: no record")))?;
            let r: StoredRequest = serde_json::from_str(rec).map_err(|e| self.corrupt(format!("request {id}: unreadable record: {e}")))?;
            out.push((
                r,
                get_n(item, "ver").unwrap_or(0),
                get_n(item, "pages").and_then(|p| usize::try_from(p).ok()).unwrap_or(1),
            ));
        }
        Ok(out)
    }

    /// Every request with its machines, oldest first.
    async fn all_requests(&self) -> Result<Vec<Loaded>, StoreError> {
        let items = self.scan_all(&self.requests, None).await?;
        let mut heads: HashMap<String, Loaded> = HashMap::new();
        let mut rest: Vec<(String, u64, Vec<StoredMachine>)> = Vec::new();
        for item in &items {
            let id = get_s(item, "id").unwrap_or("?").to_string();
            match get_n(item, "pg") {
                Some(0) => {
                    heads.insert(id, self.parse_head(item)?);
                }
                Some(p) => rest.push((id.clone(), p, self.parse_machines(&id, item)?)),
                None => return Err(self.corrupt(format!("request {id}: an item without a page number"))),
            }
        }
        rest.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        for (id, _, machines) in rest {
            if let Some(h) = heads.get_mut(&id) {
                h.req.machines.extend(machines);
            }
        }
        let mut all: Vec<Loaded> = heads.into_values().collect();
        all.sort_by(|a, b| (a.req.created_at, &a.req.id).cmp(&(b.req.created_at, &b.req.id)));
        Ok(all)
    }

    /// Applies each update (record fields and machines, merged into what is stored) with
    /// optimistic concurrency: a write that lost a race reads the request again.
    async fn update_all(&self, updates: &[(&RequestRecord, &[Machine])]) -> Result<(), StoreError> {
        let mut pending: Vec<(StoredRequest, Vec<Machine>)> = updates
            .iter()
            .map(|(r, m)| (StoredRequest::from_record(r, &[]), m.to_vec()))
            .collect();
        for _ in 0..MAX_CONFLICT_RETRIES {
            if pending.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = pending.iter().map(|(r, _)| r.id.clone()).collect();
            let stored = self.load(&ids).await?;
            // Several updates of one request in one batch: applied in order on one copy.
            let mut merged: Vec<(String, Loaded, StoredRequest)> = Vec::new();
            for (new, machines) in &pending {
                let Some(old) = stored.get(&new.id) else {
                    continue; // deleted meanwhile (or never stored): nothing to update
                };
                let base = match merged.iter().position(|(id, _, _)| id == &new.id) {
                    Some(i) => merged.remove(i).2,
                    None => old.req.clone(),
                };
                let mut next = base.clone();
                if !same_state(&base, new) {
                    next.phase = new.phase.clone();
                    next.status = new.status.clone();
                    next.outstanding = new.outstanding;
                    next.message = new.message.clone();
                    next.claimed = new.claimed;
                    next.updated_at = new.updated_at;
                }
                upsert_machines(&mut next.machines, machines);
                merged.push((new.id.clone(), old.clone(), next));
            }
            let changed: Vec<(Loaded, StoredRequest)> = merged
                .into_iter()
                .filter(|(_, old, next)| &old.req != next)
                .map(|(_, old, next)| (old, next))
                .collect();
            let mut lost = HashSet::new();
            for chunk in changed.chunks(WRITES_IN_FLIGHT) {
                let writes = chunk
                    .iter()
                    .map(|(old, next)| self.write(Some((old.ver, old.pages)), Some(&old.req), next));
                for (result, (_, next)) in join_all(writes).await.into_iter().zip(chunk) {
                    match result {
                        Ok(()) => {}
                        Err(WriteFailure::Conflict) => {
                            lost.insert(next.id.clone());
                        }
                        Err(WriteFailure::Error(e)) => return Err(e),
                    }
                }
            }
            pending.retain(|(r, _)| lost.contains(&r.id));
        }
        Err(StoreError::Backend {
            location: self.location(),
            message: format!(
                "{} request(s) changed by other writers on each of {MAX_CONFLICT_RETRIES} tries; not updated",
                pending.len()
            ),
        })
    }

    /// Deletes request `r` as read at version `ver` (not if it changed since), then its
    /// host index items.
    async fn delete_request(&self, r: &StoredRequest, ver: u64, pages: usize) -> Result<bool, StoreError> {
        let gone = self.delete_request_items(&r.id, ver, pages).await?;
        if gone && r.kind == "provision" {
            let mut names: Vec<&str> = r.machines.iter().map(|m| m.name.as_str()).filter(|n| !n.is_empty()).collect();
            names.sort_unstable();
            names.dedup();
            let keys = names
                .into_iter()
                .map(|name| HashMap::from([("name".to_string(), s(name)), ("rid".to_string(), s(&r.id))]))
                .collect();
            self.batch_delete(&self.hosts, keys).await?;
        }
        Ok(gone)
    }

    async fn delete_request_items(&self, id: &str, ver: u64, pages: usize) -> Result<bool, StoreError> {
        let mut actions = Vec::new();
        for page in 0..pages.max(1) {
            let mut del = sdk::types::Delete::builder()
                .table_name(&self.requests)
                .set_key(Some(request_key(id, page)));
            if page == 0 {
                del = del
                    .condition_expression("#ver = :v")
                    .expression_attribute_names("#ver", "ver")
                    .expression_attribute_values(":v", n(ver));
            }
            actions.push(
                TransactWriteItem::builder()
                    .delete(del.build().map_err(|e| self.build_error(e))?)
                    .build(),
            );
        }
        if actions.len() == 1 {
            let r = self
                .client
                .delete_item()
                .table_name(&self.requests)
                .set_key(Some(request_key(id, 0)))
                .condition_expression("#ver = :v")
                .expression_attribute_names("#ver", "ver")
                .expression_attribute_values(":v", n(ver))
                .send()
                .await;
            return match r {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(self.sdk_error("DeleteItem (request)", &e)),
            };
        }
        match self.client.transact_write_items().set_transact_items(Some(actions)).send().await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.code(), Some("TransactionCanceledException" | "TransactionConflictException")) => Ok(false),
            Err(e) => Err(self.sdk_error("TransactWriteItems (delete request)", &e)),
        }
    }

    /// kv entries of `namespace` whose key starts with `prefix`, in key order, stopping
    /// once past the bounds (None then).
    async fn kv_query(
        &self,
        namespace: &str,
        prefix: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let mut bounds = super::ScanBounds::new(max_entries, max_bytes);
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.kv)
                .consistent_read(true)
                .expression_attribute_names("#n", "ns")
                .expression_attribute_values(":n", s(namespace))
                .set_exclusive_start_key(start.take());
            q = if prefix.is_empty() {
                q.key_condition_expression("#n = :n")
            } else {
                q.key_condition_expression("#n = :n AND begins_with(#k, :p)")
                    .expression_attribute_names("#k", "k")
                    .expression_attribute_values(":p", s(prefix))
            };
            if max_entries < usize::MAX {
                q = q.limit(i32::try_from(max_entries.saturating_add(1)).unwrap_or(i32::MAX));
            }
            let page = q.send().await.map_err(|e| self.sdk_error("Query (kv)", &e))?;
            for item in page.items() {
                let k = get_s(item, "k").unwrap_or_default().to_string();
                let v = get_s(item, "v").unwrap_or_default().to_string();
                if !bounds.push(k, v) {
                    return Ok(None);
                }
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(Some(bounds.rows)),
            }
        }
    }

    /// Counts of the tables (for import's emptiness check): requests and kv entries.
    async fn counts(&self) -> Result<(usize, usize), StoreError> {
        let mut counts = [0usize; 2];
        for (i, table) in [&self.requests, &self.kv].into_iter().enumerate() {
            let mut start: Option<Item> = None;
            loop {
                let mut q = self
                    .client
                    .scan()
                    .table_name(table)
                    .consistent_read(true)
                    .select(sdk::types::Select::Count)
                    .set_exclusive_start_key(start.take());
                if i == 0 {
                    q = q
                        .filter_expression("#pg = :z")
                        .expression_attribute_names("#pg", "pg")
                        .expression_attribute_values(":z", n(0));
                }
                let page = q.send().await.map_err(|e| self.sdk_error("Scan (count)", &e))?;
                counts[i] += usize::try_from(page.count()).unwrap_or(0);
                match page.last_evaluated_key() {
                    Some(k) if !k.is_empty() => start = Some(k.clone()),
                    _ => break,
                }
            }
        }
        Ok((counts[0], counts[1]))
    }

    /// Writes `items` into `table` in batches of 25, retrying what DynamoDB left unprocessed.
    async fn batch_put(&self, table: &str, items: Vec<Item>) -> Result<(), StoreError> {
        let queue: Vec<WriteRequest> = items
            .into_iter()
            .map(|item| {
                sdk::types::PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|p| WriteRequest::builder().put_request(p).build())
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.build_error(e))?;
        self.batch_write(table, queue).await
    }

    /// Deletes the items with `keys` from `table` in batches of 25.
    async fn batch_delete(&self, table: &str, keys: Vec<Item>) -> Result<(), StoreError> {
        let queue: Vec<WriteRequest> = keys
            .into_iter()
            .map(|key| {
                sdk::types::DeleteRequest::builder()
                    .set_key(Some(key))
                    .build()
                    .map(|d| WriteRequest::builder().delete_request(d).build())
            })
            .collect::<Result<_, _>>()
            .map_err(|e| self.build_error(e))?;
        self.batch_write(table, queue).await
    }

    async fn batch_write(&self, table: &str, mut queue: Vec<WriteRequest>) -> Result<(), StoreError> {
        while !queue.is_empty() {
            let rest = queue.split_off(queue.len().min(BATCH_WRITE));
            let out = self
                .client
                .batch_write_item()
                .request_items(table, std::mem::replace(&mut queue, rest))
                .send()
                .await
                .map_err(|e| self.sdk_error("BatchWriteItem", &e))?;
            if let Some(left) = out.unprocessed_items().and_then(|u| u.get(table))
                && !left.is_empty()
            {
                queue.extend(left.iter().cloned());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

impl DynamoStore {
    /// Ids of the requests the host index lists for `name`.
    async fn holders_in_index(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.hosts)
                .consistent_read(true)
                .key_condition_expression("#n = :n")
                .expression_attribute_names("#n", "name")
                .expression_attribute_values(":n", s(name))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.sdk_error("Query (hosts)", &e))?;
            out.extend(page.items().iter().filter_map(|i| get_s(i, "rid")).map(str::to_string));
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }
}

/// Runs `futures` concurrently on the current task (no spawning: they borrow the store)
/// and returns their results in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, r) in futures.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *r = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

impl StateStore for DynamoStore {
    fn insert_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        let stored = StoredRequest::from_record(rec, machines);
        match self.rt.block_on(self.write(None, None, &stored)) {
            Ok(()) => Ok(()),
            Err(WriteFailure::Conflict) => Err(StoreError::Backend {
                location: self.location(),
                message: format!("request {} already exists", rec.id),
            }),
            Err(WriteFailure::Error(e)) => Err(e),
        }
    }

    fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let out = self
            .rt
            .block_on(
                self.client
                    .get_item()
                    .table_name(&self.requests)
                    .set_key(Some(request_key(id, 0)))
                    .consistent_read(true)
                    .projection_expression("#r")
                    .expression_attribute_names("#r", "rec")
                    .send(),
            )
            .map_err(|e| self.sdk_error("GetItem (request)", &e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let rec = get_s(item, "rec").ok_or_else(|| self.corrupt(format!("request {id}: no record")))?;
        let r: StoredRequest = serde_json::from_str(rec).map_err(|e| self.corrupt(format!("request {id}: unreadable record: {e}")))?;
        r.to_record(&self.location()).map(Some)
    }

    fn machines(&self, request_id: &str) -> Result<Vec<Machine>, StoreError> {
        let loaded = self.rt.block_on(self.load(&[request_id.to_string()]))?;
        match loaded.get(request_id) {
            Some(l) => l.req.to_machines(&self.location()),
            None => Ok(Vec::new()),
        }
    }

    fn update_request(&self, rec: &RequestRecord, machines: &[Machine]) -> Result<(), StoreError> {
        self.rt.block_on(self.update_all(&[(rec, machines)]))
    }

    fn requests_with_machines(&self, ids: &[String]) -> Result<HashMap<String, (RequestRecord, Vec<Machine>)>, StoreError> {
        let loaded = self.rt.block_on(self.load(ids))?;
        let location = self.location();
        loaded
            .into_iter()
            .map(|(id, l)| Ok((id, (l.req.to_record(&location)?, l.req.to_machines(&location)?))))
            .collect()
    }

    fn update_requests(&self, updates: &[(RequestRecord, Vec<Machine>)]) -> Result<(), StoreError> {
        let refs: Vec<(&RequestRecord, &[Machine])> = updates.iter().map(|(r, m)| (r, m.as_slice())).collect();
        self.rt.block_on(self.update_all(&refs))
    }

    fn stale_requests(&self, before: u64) -> Result<Vec<RequestRecord>, StoreError> {
        let mut stale: Vec<StoredRequest> = self
            .rt
            .block_on(self.records())?
            .into_iter()
            .map(|(r, _, _)| r)
            .filter(|r| r.is_orphaned(before))
            .collect();
        stale.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let location = self.location();
        stale.iter().map(|r| r.to_record(&location)).collect()
    }

    fn provision_holders(&self, name: &str) -> Result<Vec<(String, Machine)>, StoreError> {
        Ok(self.provision_holders_of(&[name.to_string()])?.remove(name).unwrap_or_default())
    }

    fn provision_holders_of(&self, names: &[String]) -> Result<HashMap<String, Vec<(String, Machine)>>, StoreError> {
        if names.is_empty() {
            return Ok(HashMap::new());
        }
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut held = self
            .rt
            .block_on(async {
                let mut ids: Vec<String> = Vec::new();
                let unique: Vec<&str> = wanted.iter().copied().collect();
                for chunk in unique.chunks(WRITES_IN_FLIGHT) {
                    for found in join_all(chunk.iter().map(|name| self.holders_in_index(name))).await {
                        ids.extend(found?);
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                self.load(&ids).await
            })?
            .into_values()
            .filter(|l| l.req.kind == "provision")
            .collect::<Vec<Loaded>>();
        // Newest first, as the SQL stores order them.
        held.sort_by(|a, b| (b.req.created_at, &b.req.id).cmp(&(a.req.created_at, &a.req.id)));
        let location = self.location();
        let mut out: HashMap<String, Vec<(String, Machine)>> = HashMap::new();
        for l in &held {
            for m in l.req.machines.iter().filter(|m| wanted.contains(m.name.as_str())) {
                out.entry(m.name.clone())
                    .or_default()
                    .push((l.req.id.clone(), m.to_machine(&location)?));
            }
        }
        Ok(out)
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        let out = self
            .rt
            .block_on(
                self.client
                    .get_item()
                    .table_name(&self.kv)
                    .key("ns", s(namespace))
                    .key("k", s(key))
                    .consistent_read(true)
                    .send(),
            )
            .map_err(|e| self.sdk_error("GetItem (kv)", &e))?;
        Ok(out.item().and_then(|i| get_s(i, "v")).map(str::to_string))
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.rt
            .block_on(
                self.client
                    .put_item()
                    .table_name(&self.kv)
                    .item("ns", s(namespace))
                    .item("k", s(key))
                    .item("v", s(value))
                    .send(),
            )
            .map(|_| ())
            .map_err(|e| self.sdk_error("PutItem (kv)", &e))
    }

    fn kv_insert_if_absent(&self, namespace: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let r = self.rt.block_on(
            self.client
                .put_item()
                .table_name(&self.kv)
                .item("ns", s(namespace))
                .item("k", s(key))
                .item("v", s(value))
                .condition_expression("attribute_not_exists(#n)")
                .expression_attribute_names("#n", "ns")
                .send(),
        );
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(self.sdk_error("PutItem (kv, if absent)", &e)),
        }
    }

    fn kv_delete_if_equals(&self, namespace: &str, key: &str, expected: &str) -> Result<bool, StoreError> {
        let r = self.rt.block_on(
            self.client
                .delete_item()
                .table_name(&self.kv)
                .key("ns", s(namespace))
                .key("k", s(key))
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "v")
                .expression_attribute_values(":v", s(expected))
                .send(),
        );
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(self.sdk_error("DeleteItem (kv, if equal)", &e)),
        }
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.rt
            .block_on(
                self.client
                    .delete_item()
                    .table_name(&self.kv)
                    .key("ns", s(namespace))
                    .key("k", s(key))
                    .send(),
            )
            .map(|_| ())
            .map_err(|e| self.sdk_error("DeleteItem (kv)", &e))
    }

    fn kv_scan(&self, namespace: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .rt
            .block_on(self.kv_query(namespace, prefix, usize::MAX, usize::MAX))?
            .unwrap_or_default())
    }

    fn kv_scan_bounded(
        &self,
        namespace: &str,
        prefix: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        self.rt.block_on(self.kv_query(namespace, prefix, max_entries, max_bytes))
    }

    fn prune_finished(&self, before: u64, limit: usize) -> Result<usize, StoreError> {
        self.rt.block_on(async {
            // Most calls find nothing old enough: decided from the records alone.
            let records = self.records().await?;
            if !records.iter().any(|(r, _, _)| r.is_finished() && r.updated_at < before) {
                return Ok(0);
            }
            let all = self.all_requests().await?;
            let doc = Document {
                schema_version: SCHEMA_VERSION,
                requests: all.iter().map(|l| l.req.clone()).collect(),
                kv: Default::default(),
            };
            let mut victims: Vec<&Loaded> = all
                .iter()
                .filter(|l| l.req.is_finished() && l.req.updated_at < before && releasable(&doc, &l.req))
                .collect();
            victims.sort_by(|a, b| (a.req.updated_at, &a.req.id).cmp(&(b.req.updated_at, &b.req.id)));
            victims.truncate(limit);
            let mut gone = 0;
            for l in victims {
                // One changed since it was read is left for the next call to judge again.
                if self.delete_request(&l.req, l.ver, l.pages).await? {
                    gone += 1;
                }
            }
            Ok(gone)
        })
    }

    fn export(&self) -> Result<Document, StoreError> {
        self.rt.block_on(async {
            let requests = self.all_requests().await?.into_iter().map(|l| l.req).collect();
            let mut doc = Document {
                schema_version: SCHEMA_VERSION,
                requests,
                kv: Default::default(),
            };
            for item in self.scan_all(&self.kv, None).await? {
                let (Some(ns), Some(k), Some(v)) = (get_s(&item, "ns"), get_s(&item, "k"), get_s(&item, "v")) else {
                    return Err(self.corrupt("a kv item without namespace, key or value".into()));
                };
                doc.kv.entry(ns.to_string()).or_default().insert(k.to_string(), v.to_string());
            }
            Ok(doc)
        })
    }

    fn import(&self, doc: &Document) -> Result<(), StoreError> {
        super::check_import_version(&self.location(), doc)?;
        for r in &doc.requests {
            r.to_record(&self.location())?;
            r.to_machines(&self.location())?;
        }
        self.rt.block_on(async {
            let (requests, kv) = self.counts().await?;
            if requests + kv > 0 {
                return Err(StoreError::NotEmpty {
                    location: self.location(),
                    requests,
                    kv,
                });
            }
            let mut items = Vec::new();
            for r in &doc.requests {
                self.index_hosts(None, r).await?;
                items.extend(self.request_items(r, 1)?);
            }
            self.batch_put(&self.requests, items).await?;
            let kv_items = doc
                .kv
                .iter()
                .flat_map(|(ns, entries)| {
                    entries
                        .iter()
                        .map(move |(k, v)| HashMap::from([("ns".to_string(), s(ns)), ("k".to_string(), s(k)), ("v".to_string(), s(v))]))
                })
                .collect();
            self.batch_put(&self.kv, kv_items).await
        })
    }

    fn inspect(&self) -> Result<BackendReport, StoreError> {
        self.rt.block_on(async {
            let version = self
                .read_meta()
                .await?
                .and_then(|m| get_n(&m, "version"))
                .and_then(|v| i64::try_from(v).ok())
                .unwrap_or(0);
            let mut size = 0u64;
            for table in [&self.requests, &self.hosts, &self.kv, &self.meta] {
                let out = self
                    .client
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("DescribeTable", &e))?;
                size += out
                    .table()
                    .and_then(|t| t.table_size_bytes())
                    .and_then(|b| u64::try_from(b).ok())
                    .unwrap_or(0);
            }
            // Pages whose request item is gone (none are written without it).
            let keys = self.scan_all(&self.requests, Some(&["id", "pg"])).await?;
            let heads: HashSet<&str> = keys
                .iter()
                .filter(|i| get_n(i, "pg") == Some(0))
                .filter_map(|i| get_s(i, "id"))
                .collect();
            let stray = keys
                .iter()
                .filter(|i| get_n(i, "pg") != Some(0) && !get_s(i, "id").is_some_and(|id| heads.contains(id)))
                .count();
            let mut problems = Vec::new();
            if stray > 0 {
                problems.push(format!("{stray} machine page item(s) belong to no request"));
            }
            Ok(BackendReport {
                backend: "dynamodb",
                location: self.location(),
                schema_version: version,
                // DynamoDB updates its size figure about every six hours.
                size_bytes: Some(size),
                problems,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: usize) -> StoredMachine {
        StoredMachine {
            machine_id: format!("i-{i:017}"),
            name: format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250),
            private_ip: format!("10.0.{}.{}", i / 250, i % 250),
            public_ip: None,
            launch_time: 1_700_000_000,
            state: "running".into(),
            message: None,
        }
    }

    #[test]
    fn machines_split_into_pages_that_fit_an_item_and_read_back_in_order() {
        assert_eq!(paginate(&[]), ["[]"], "a request without machines is one page");
        let few: Vec<StoredMachine> = (0..10).map(m).collect();
        assert_eq!(paginate(&few).len(), 1);
        let many: Vec<StoredMachine> = (0..10_000).map(m).collect();
        let pages = paginate(&many);
        assert!(pages.len() > 1 && pages.len() <= MAX_PAGES, "{} pages", pages.len());
        assert!(pages.iter().all(|p| p.len() <= PAGE_BYTES + 2), "each page fits an item");
        let back: Vec<StoredMachine> = pages
            .iter()
            .flat_map(|p| serde_json::from_str::<Vec<StoredMachine>>(p).expect("page is JSON"))
            .collect();
        assert_eq!(back, many, "order and content survive the split");
    }
}
