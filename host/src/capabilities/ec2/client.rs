//! The EC2 client behind the capability: built once per process on first use, from IBM's
//! `awsprov_config.json` keys (region, endpoint, credential file, proxy, timeouts, retry
//! counts), with throttling retried here with backoff and every describe batched.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_ec2 as sdk;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use sdk::types::Filter;

use super::convert;
use super::credentials::{credentials_file, credentials_script, whoami};
use super::{DESCRIBE_BATCH, DESCRIBE_PAGE, FILTER_VALUES, TAG_PROVIDER, TAG_REQUEST};
use crate::engine::bindings::hostfactory::capabilities::ec2::*;

/// Connection settings, from IBM's config keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Settings {
    /// `AWS_REGION`.
    pub region: String,
    /// `AWS_ENDPOINT_URL` (a VPC endpoint, or the emulator in tests).
    pub endpoint_url: Option<String>,
    /// `AWS_CREDENTIAL_FILE`: a shared-credentials file (`[default]` profile); None = the
    /// SDK's standard chain (environment, profile, instance role).
    pub credential_file: Option<PathBuf>,
    /// The AWS profile for credentials (the seed's `config.profile`; else `AWS_PROFILE`,
    /// else `default`), in `credential_file` or the standard chain's files.
    pub profile: Option<String>,
    /// `AWS_PROXY_HOST` + `AWS_PROXY_PORT`.
    pub proxy: Option<String>,
    /// `AWS_CONNECTION_TIMEOUT_MS`.
    pub connect_timeout: Duration,
    /// `AWS_REQUEST_RETRY_ATTEMPTS`: retries of a throttled mutating call.
    pub retry_attempts: u32,
    /// `AWS_DESCRIBE_REQUEST_RETRY_ATTEMPTS`: retries of a throttled describe.
    pub describe_retry_attempts: u32,
    /// `AWS_DESCRIBE_REQUEST_INTERVAL`: first pause between describe retries.
    pub describe_interval: Duration,
    /// `AWS_CREDENTIAL_SCRIPT`: a site program printing temporary credentials, run by the
    /// host (never a guest) when the cached ones are older than `credential_renew_margin`.
    pub credential_script: Option<PathBuf>,
    /// `AWS_CREDENTIAL_RENEW_MARGIN`: age at which the script's credentials are renewed.
    pub credential_renew_margin: Duration,
    /// Directory holding the script's cached output (the work dir, mode 0600 files).
    pub credential_cache_dir: Option<PathBuf>,
    /// `AWS_TAG_InstanceID` / `TAG_INSTANCEID`: tag each instance and its volumes with
    /// `InstanceID` = its id once it runs.
    pub tag_instance_id: bool,
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: None,
            credential_file: None,
            profile: None,
            proxy: None,
            connect_timeout: Duration::from_millis(10_000),
            retry_attempts: 0,
            describe_retry_attempts: 0,
            describe_interval: Duration::from_millis(0),
            credential_script: None,
            credential_renew_margin: Duration::from_secs(1770),
            credential_cache_dir: None,
            tag_instance_id: false,
        }
    }
}

/// A lazily built EC2 client and the runtime its calls run on.
pub struct Ec2Client {
    settings: Ec2Settings,
    built: OnceLock<Result<Built, String>>,
}

/// The runtime and the clients of one connection setting: EC2, and Auto Scaling (which
/// the `autoscaling` capability calls through the same credentials, endpoint and limits).
struct Built {
    rt: tokio::runtime::Runtime,
    ec2: sdk::Client,
    autoscaling: aws_sdk_autoscaling::Client,
}

const THROTTLING: [&str; 4] = ["RequestLimitExceeded", "Throttling", "ThrottlingException", "EC2ThrottledException"];

/// AWS fault codes that mean the credentials are wrong, expired or not allowed.
const CREDENTIAL_FAULTS: [&str; 7] = [
    "AuthFailure",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
    "UnauthorizedOperation",
];

impl Ec2Client {
    /// The connection settings.
    pub fn settings(&self) -> &Ec2Settings {
        &self.settings
    }

    /// A client for `settings`; nothing is built until the first call.
    pub fn new(settings: Ec2Settings) -> Self {
        Self {
            settings,
            built: OnceLock::new(),
        }
    }

    fn build(&self) -> Result<Built, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
        let s = self.settings.clone();
        // The system trust store as one bundle file when there is one: scanning the certs
        // directory (a stat per file) was most of a call's cost.
        let http = crate::awsconn::http_client(s.endpoint_url.as_deref(), s.proxy.as_deref()).map_err(|e| {
            if s.proxy.is_some() {
                format!("AWS_PROXY_HOST/PORT: {e}")
            } else {
                e
            }
        })?;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(s.connect_timeout)
            .operation_attempt_timeout(crate::limits::EC2_ATTEMPT_TIMEOUT)
            .build();
        // Throttling is retried in `call` with IBM's retry settings; the SDK adds none.
        let retries = aws_config::retry::RetryConfig::standard().with_max_attempts(1);
        let given = match (&s.credential_script, &s.credential_file) {
            (Some(script), _) => Some(credentials_script(&s, script)?),
            (None, Some(file)) => Some(credentials_file(file, s.profile.as_deref())?),
            (None, None) => None,
        };
        let conf = match given {
            // Everything is given: build the config directly, without the config loader's
            // profile-file reading and provider chains (measurable on every call).
            Some(creds) => {
                let mut b = aws_config::SdkConfig::builder()
                    .behavior_version(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(s.region.clone()))
                    .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
                    .http_client(http)
                    .timeout_config(timeouts)
                    .retry_config(retries);
                b.set_endpoint_url(s.endpoint_url.clone());
                b.build()
            }
            None => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(s.region.clone()))
                    .http_client(http)
                    .timeout_config(timeouts)
                    .retry_config(retries);
                if let Some(url) = &s.endpoint_url {
                    loader = loader.endpoint_url(url.clone());
                }
                if let Some(p) = &s.profile {
                    loader = loader.profile_name(p);
                }
                rt.block_on(loader.load())
            }
        };
        Ok(Built {
            rt,
            ec2: sdk::Client::new(&conf),
            autoscaling: aws_sdk_autoscaling::Client::new(&conf),
        })
    }

    /// Where the credentials came from, as the setting to check.
    fn credentials_hint(&self) -> String {
        match (&self.settings.credential_script, &self.settings.credential_file) {
            (Some(s), _) => format!("check the credentials AWS_CREDENTIAL_SCRIPT {} prints", s.display()),
            (None, Some(f)) => format!("check the credentials in AWS_CREDENTIAL_FILE {}", f.display()),
            (None, None) => format!(
                "check the credentials of the standard AWS chain (environment, profile, instance role) for user {}",
                whoami()
            ),
        }
    }

    /// One line for a call that got no AWS answer: what failed, where it went and the
    /// settings that decide that (the SDK's full chain goes to the log).
    fn no_answer<E: std::error::Error + 'static>(&self, e: &sdk::error::SdkError<E>) -> String {
        use sdk::error::SdkError;
        let s = &self.settings;
        let target = match &s.endpoint_url {
            Some(u) => format!("AWS_ENDPOINT_URL {u}"),
            None => format!("EC2 in AWS_REGION {}", s.region),
        };
        let via = s
            .proxy
            .as_deref()
            .map_or(String::new(), |p| format!(" through AWS_PROXY_HOST/PORT {p}"));
        let cause = crate::awsconn::root_cause;
        match e {
            SdkError::TimeoutError(_) => format!(
                "no answer from {target}{via} within AWS_CONNECTION_TIMEOUT_MS {} ms; check the endpoint, the proxy and the network",
                s.connect_timeout.as_millis()
            ),
            SdkError::DispatchFailure(d) if d.is_timeout() => format!(
                "no connection to {target}{via} within AWS_CONNECTION_TIMEOUT_MS {} ms; check the endpoint, the proxy and the network",
                s.connect_timeout.as_millis()
            ),
            SdkError::DispatchFailure(d) => {
                let why = d.as_connector_error().map_or_else(|| "connection failed".to_string(), |c| cause(c));
                format!("cannot reach {target}{via}: {why}; check AWS_ENDPOINT_URL, AWS_REGION, the proxy settings and the network")
            }
            SdkError::ConstructionFailure(_) => {
                let why = std::error::Error::source(e).map_or_else(|| e.to_string(), &cause);
                if why.to_ascii_lowercase().contains("credential") {
                    format!("no AWS credentials: {why}; {}", self.credentials_hint())
                } else {
                    format!("cannot build the EC2 request: {why}")
                }
            }
            SdkError::ResponseError(_) => format!("{target} answered with something that is not an EC2 response; check AWS_ENDPOINT_URL"),
            _ => format!("EC2 call failed: {}", cause(e)),
        }
    }

    fn get(&self) -> Result<&Built, Ec2Error> {
        self.built
            .get_or_init(|| self.build())
            .as_ref()
            .map_err(|e| Ec2Error::Unavailable(e.clone()))
    }

    /// Runs EC2 `op` on the runtime, retrying throttling with exponential backoff.
    pub(crate) fn call<T, E, F, Fut>(&self, action: &str, describe: bool, op: F) -> Result<T, Ec2Error>
    where
        F: Fn(sdk::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, sdk::error::SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let built = self.get()?;
        self.call_on(&built.rt, "ec2", &built.ec2, action, describe, op)
    }

    /// Runs Auto Scaling `op` like [`Self::call`]: same connection, retries and errors.
    pub fn call_autoscaling<T, E, F, Fut>(&self, action: &str, describe: bool, op: F) -> Result<T, Ec2Error>
    where
        F: Fn(aws_sdk_autoscaling::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, sdk::error::SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let built = self.get()?;
        self.call_on(&built.rt, "autoscaling", &built.autoscaling, action, describe, op)
    }

    fn call_on<C: Clone, T, E, F, Fut>(
        &self,
        rt: &tokio::runtime::Runtime,
        service: &'static str,
        client: &C,
        action: &str,
        describe: bool,
        op: F,
    ) -> Result<T, Ec2Error>
    where
        F: Fn(C) -> Fut,
        Fut: std::future::Future<Output = Result<T, sdk::error::SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (retries, first_pause) = if describe {
            (
                self.settings.describe_retry_attempts,
                self.settings.describe_interval.max(Duration::from_millis(100)),
            )
        } else {
            (self.settings.retry_attempts, Duration::from_millis(200))
        };
        let t0 = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let result = rt.block_on(op(client.clone()));
            match result {
                Ok(v) => {
                    crate::metrics::cloud(service, action, "ok");
                    tracing::debug!(service, action, attempt, elapsed_us = t0.elapsed().as_micros() as u64, "cloud call");
                    return Ok(v);
                }
                Err(e) => {
                    let code = e.code().map(str::to_string);
                    if code.as_deref().is_some_and(|c| THROTTLING.contains(&c)) && attempt < retries {
                        let pause = first_pause.saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(10));
                        tracing::warn!(service, action, attempt, pause_ms = pause.as_millis() as u64, "throttled; retrying");
                        std::thread::sleep(pause);
                        attempt += 1;
                        continue;
                    }
                    crate::metrics::cloud(service, action, code.as_deref().unwrap_or("no answer"));
                    let err = match code {
                        Some(code) => {
                            let mut message = e.message().unwrap_or_default().to_string();
                            if CREDENTIAL_FAULTS.contains(&code.as_str()) {
                                message = format!("{message} ({})", self.credentials_hint());
                            }
                            Ec2Error::Aws(AwsFault { message, code })
                        }
                        None => Ec2Error::Unavailable(self.no_answer(&e)),
                    };
                    // The whole chain goes to the log; the answer carries one line.
                    tracing::warn!(
                        service,
                        action,
                        attempt,
                        error = %aws_sdk_ec2::error::DisplayErrorContext(&e),
                        "cloud call failed"
                    );
                    return Err(err);
                }
            }
        }
    }

    /// The root device name of `spec`'s AMI when `spec` sets a root volume (it must be
    /// mapped under the AMI's own root device name, or EC2 attaches a second volume instead
    /// of resizing the root), and `spec` with the root volume's size taken from the AMI when
    /// the template gives only a type (`volumeType` without `rootDeviceVolumeSize`: a
    /// mapping needs a size). Without a root volume, no call is made.
    fn root(&self, spec: &LaunchSpec) -> Result<(Option<String>, LaunchSpec), Ec2Error> {
        let Some(volume) = &spec.root_volume else {
            return Ok((None, spec.clone()));
        };
        let image_id = &spec.image_id;
        let out = self.call("DescribeImages", true, |c| c.describe_images().image_ids(image_id).send())?;
        let image = out.images().first();
        let device = image.and_then(|i| i.root_device_name()).map(str::to_string).ok_or_else(|| {
            Ec2Error::Aws(AwsFault {
                code: "InvalidAMIID.NotFound".into(),
                message: format!("image {image_id} not found or has no root device name"),
            })
        })?;
        let mut spec = spec.clone();
        if volume.size_gib.is_none() {
            let ami_size = image
                .into_iter()
                .flat_map(|i| i.block_device_mappings())
                .find(|m| m.device_name() == Some(device.as_str()))
                .and_then(|m| m.ebs())
                .and_then(|e| e.volume_size())
                .and_then(|s| u32::try_from(s).ok());
            if let Some(root) = spec.root_volume.as_mut() {
                root.size_gib = ami_size;
            }
        }
        Ok((Some(device), spec))
    }

    /// CreateLaunchTemplate `hfwasm-<token>` from `spec` with ownership `tags` (on the
    /// template, and in its data on instances and volumes) and `instance_type` when given,
    /// `token` as idempotency token; a retry of the same token (crash repair) finds the
    /// existing template.
    pub(crate) fn launch_template(
        &self,
        token: &str,
        spec: &LaunchSpec,
        tags: &[Tag],
        instance_type: Option<&str>,
    ) -> Result<String, Ec2Error> {
        let name = format!("hfwasm-{token}");
        let (root_device, spec) = self.root(spec)?;
        let data = convert::launch_template_data(&spec, tags, root_device.as_deref(), instance_type);
        // EC2 takes client tokens of at most 64 characters; the name alone makes a retry
        // find the template (AlreadyExists, below).
        let client_token = (token.len() <= 64).then(|| token.to_string());
        let out = self.call("CreateLaunchTemplate", false, |c| {
            c.create_launch_template()
                .launch_template_name(&name)
                .launch_template_data(data.clone())
                .set_client_token(client_token.clone())
                .tag_specifications(convert::tag_spec(sdk::types::ResourceType::LaunchTemplate, tags))
                .send()
        });
        match out {
            Ok(o) => Ok(o
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .unwrap_or_default()
                .to_string()),
            Err(Ec2Error::Aws(f)) if f.code.contains("AlreadyExists") => {
                let d = self.call("DescribeLaunchTemplates", true, |c| {
                    c.describe_launch_templates().launch_template_names(&name).send()
                })?;
                Ok(d.launch_templates()
                    .first()
                    .and_then(|t| t.launch_template_id())
                    .unwrap_or_default()
                    .to_string())
            }
            Err(e) => Err(e),
        }
    }
}

/// The `hfwasm:provider` tag among `tags`.
fn owner_tag(tags: &[sdk::types::Tag]) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(TAG_PROVIDER))
        .and_then(|t| t.value().map(str::to_string))
}

/// Whether an AWS fault says the thing asked about does not exist.
impl Ec2Client {
    /// IBM's `AWS_TAG_InstanceID`: once an instance runs, tag it and its EBS volumes with
    /// `InstanceID` = its id (as IBM's plugin does when it sees the instance running). Done
    /// when a describe first sees it running without the tag, so a crash between launch
    /// and tagging is repaired by the next describe. A failure is logged, not fatal: the
    /// tag is for the site's accounting, not for hfwasm.
    fn tag_instance_id(&self, i: &sdk::types::Instance, inst: &mut Instance) {
        const KEY: &str = "InstanceID";
        let running = i.state().and_then(|s| s.name()) == Some(&sdk::types::InstanceStateName::Running);
        if !running || inst.tags.iter().any(|t| t.key == KEY) {
            return;
        }
        let id = inst.instance_id.clone();
        let mut resources = vec![id.clone()];
        resources.extend(
            i.block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(str::to_string)),
        );
        let tag = sdk::types::Tag::builder().key(KEY).value(&id).build();
        match self.call("CreateTags", false, |c| {
            c.create_tags().set_resources(Some(resources.clone())).tags(tag.clone()).send()
        }) {
            Ok(_) => inst.tags.push(Tag {
                key: KEY.into(),
                value: id,
            }),
            Err(e) => tracing::warn!(instance = %id, error = ?e, "cannot tag the instance with InstanceID"),
        }
    }
}

fn not_found(e: &Ec2Error) -> bool {
    matches!(e, Ec2Error::Aws(f) if f.code.contains("NotFound") || f.code.contains("Invalid"))
}

impl super::Ec2Api for Ec2Client {
    fn region(&self) -> &str {
        &self.settings.region
    }

    /// RunInstances with ownership `tags` and the request id as client token.
    fn run_instances(&self, req: &RunRequest, tags: &[Tag]) -> Result<Vec<Instance>, Ec2Error> {
        let (root_device, root_spec) = self.root(&req.spec)?;
        let count = i32::try_from(req.count).unwrap_or(i32::MAX);
        let out = self.call("RunInstances", false, |c| {
            let mut b = c
                .run_instances()
                .image_id(&req.spec.image_id)
                .instance_type(sdk::types::InstanceType::from(req.instance_type.as_str()))
                .min_count(count)
                .max_count(count)
                .client_token(&req.request_id)
                .set_key_name(req.spec.key_name.clone())
                .set_user_data(req.spec.user_data.as_deref().map(convert::base64))
                .set_ebs_optimized(req.spec.ebs_optimized)
                .set_placement(convert::placement(&req.spec))
                .set_block_device_mappings(convert::root_mappings(&root_spec, root_device.as_deref()))
                .tag_specifications(convert::tag_spec(sdk::types::ResourceType::Instance, tags))
                .tag_specifications(convert::tag_spec(sdk::types::ResourceType::Volume, tags));
            if let Some(arn) = &req.spec.instance_profile_arn {
                b = b.iam_instance_profile(sdk::types::IamInstanceProfileSpecification::builder().arn(arn).build());
            }
            // Subnet and security groups go on the interfaces when the template asks for
            // special ones (EC2 refuses them in both places).
            match convert::network_interfaces(&req.spec) {
                Some(nics) => b = b.set_network_interfaces(Some(nics)),
                None => {
                    b = b
                        .set_subnet_id(req.spec.subnet_ids.first().cloned())
                        .set_security_group_ids((!req.spec.security_group_ids.is_empty()).then(|| req.spec.security_group_ids.clone()))
                }
            }
            if let Some(lt) = &req.spec.launch_template_id {
                b = b.launch_template(
                    sdk::types::LaunchTemplateSpecification::builder()
                        .launch_template_id(lt)
                        .set_version(req.spec.launch_template_version.clone())
                        .build(),
                );
            }
            if let Some(price) = &req.spot_max_price {
                let mut spot = sdk::types::SpotMarketOptions::builder();
                if !price.is_empty() {
                    spot = spot.max_price(price);
                }
                b = b.instance_market_options(
                    sdk::types::InstanceMarketOptionsRequest::builder()
                        .market_type(sdk::types::MarketType::Spot)
                        .spot_options(spot.build())
                        .build(),
                );
            }
            b.send()
        })?;
        Ok(out.instances().iter().map(convert::instance).collect())
    }

    /// CreateFleet (`instant`) with ownership `tags` on the instances and the fleet.
    fn create_fleet(&self, req: &FleetRequest, tags: &[Tag]) -> Result<FleetResult, Ec2Error> {
        // The overrides carry instance type and subnet; a transient launch template carries
        // the rest (EC2 Fleet takes launch parameters only from a launch template).
        // One request may launch two fleets (spot, then an on-demand top-up): each gets its own
        // idempotency token, and so its own transient launch template, from its capacity split.
        let token = format!("{}-{}x{}", req.request_id, req.total_units, req.on_demand_units);
        let template_id = match &req.spec.launch_template_id {
            Some(id) => id.clone(),
            None => self.launch_template(&token, &req.spec, tags, None)?,
        };
        let spot_units = req.total_units.saturating_sub(req.on_demand_units);
        let default_market = if spot_units > 0 {
            sdk::types::DefaultTargetCapacityType::Spot
        } else {
            sdk::types::DefaultTargetCapacityType::OnDemand
        };
        let result = self.call("CreateFleet", false, |c| {
            let overrides: Vec<_> = req
                .overrides
                .iter()
                .map(|o| convert::fleet_override(o, req.spec.subnet_ids.first()))
                .collect();
            let config = sdk::types::FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(
                    sdk::types::FleetLaunchTemplateSpecificationRequest::builder()
                        .launch_template_id(&template_id)
                        .version(match (&req.spec.launch_template_id, &req.spec.launch_template_version) {
                            (Some(_), Some(v)) => v.clone(),
                            (Some(_), None) => "$Default".to_string(),
                            (None, _) => "$Latest".to_string(),
                        })
                        .build(),
                )
                .set_overrides(Some(overrides))
                .build();
            let mut spot = sdk::types::SpotOptionsRequest::builder();
            if let Some(s) = &req.spot_allocation_strategy {
                spot = spot.allocation_strategy(sdk::types::SpotAllocationStrategy::from(s.as_str()));
            }
            if let Some(p) = &req.spot_max_price {
                spot = spot.max_total_price(p);
            }
            let mut od = sdk::types::OnDemandOptionsRequest::builder();
            if let Some(s) = &req.on_demand_allocation_strategy {
                od = od.allocation_strategy(sdk::types::FleetOnDemandAllocationStrategy::from(s.as_str()));
            }
            c.create_fleet()
                .r#type(sdk::types::FleetType::Instant)
                .client_token(&token)
                .launch_template_configs(config)
                .target_capacity_specification(
                    sdk::types::TargetCapacitySpecificationRequest::builder()
                        .total_target_capacity(i32::try_from(req.total_units).unwrap_or(i32::MAX))
                        .on_demand_target_capacity(i32::try_from(req.on_demand_units).unwrap_or(i32::MAX))
                        .spot_target_capacity(i32::try_from(spot_units).unwrap_or(i32::MAX))
                        .default_target_capacity_type(default_market.clone())
                        .build(),
                )
                .spot_options(spot.build())
                .on_demand_options(od.build())
                .tag_specifications(convert::tag_spec(sdk::types::ResourceType::Fleet, tags))
                .send()
        });
        if req.spec.launch_template_id.is_none() {
            // The instances are launched (or not); the transient template is no longer needed.
            if let Err(e) = super::Ec2Api::delete_launch_template(self, &template_id) {
                tracing::warn!(launch_template = %template_id, error = ?e, "could not delete the transient launch template");
            }
        }
        let out = result?;
        Ok(FleetResult {
            fleet_id: out.fleet_id().unwrap_or_default().to_string(),
            instance_ids: out.instances().iter().flat_map(|i| i.instance_ids().iter().cloned()).collect(),
            errors: out
                .errors()
                .iter()
                .map(|e| AwsFault {
                    code: e.error_code().unwrap_or("LaunchError").to_string(),
                    message: e.error_message().unwrap_or_default().to_string(),
                })
                .collect(),
        })
    }

    /// Instances owned by `owner` matching `filter`, one call per 1,000 ids or 200 request
    /// ids (paginated, 1,000 instances per page).
    fn describe_owned(&self, owner: &str, filter: &InstanceFilter) -> Result<Vec<Instance>, Ec2Error> {
        let owner_filter = Filter::builder().name(format!("tag:{TAG_PROVIDER}")).values(owner).build();
        let batches: Vec<Vec<Filter>> = match filter {
            InstanceFilter::Owned => vec![vec![owner_filter]],
            InstanceFilter::Request(id) => vec![vec![
                owner_filter,
                Filter::builder().name(format!("tag:{TAG_REQUEST}")).values(id).build(),
            ]],
            InstanceFilter::Requests(ids) => ids
                .chunks(FILTER_VALUES)
                .map(|chunk| {
                    vec![
                        owner_filter.clone(),
                        Filter::builder()
                            .name(format!("tag:{TAG_REQUEST}"))
                            .set_values(Some(chunk.to_vec()))
                            .build(),
                    ]
                })
                .collect(),
            InstanceFilter::Ids(ids) => ids
                .chunks(DESCRIBE_BATCH)
                .map(|chunk| {
                    vec![
                        owner_filter.clone(),
                        Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build(),
                    ]
                })
                .collect(),
        };
        // By ids the answer has at most one instance each: sized once, where doubling
        // growth would leave a third of 10,000 instances' worth unused (and alive while the
        // guest reads them).
        let mut out = match filter {
            InstanceFilter::Ids(ids) => Vec::with_capacity(ids.len()),
            _ => Vec::new(),
        };
        for filters in batches {
            let mut token: Option<String> = None;
            loop {
                let page = self.call("DescribeInstances", true, |c| {
                    c.describe_instances()
                        .set_filters(Some(filters.clone()))
                        .max_results(DESCRIBE_PAGE)
                        .set_next_token(token.clone())
                        .send()
                })?;
                for r in page.reservations() {
                    for i in r.instances() {
                        let mut inst = convert::instance(i);
                        if self.settings.tag_instance_id {
                            self.tag_instance_id(i, &mut inst);
                        }
                        out.push(inst);
                    }
                }
                token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// TerminateInstances for `ids` (already checked for ownership).
    fn terminate(&self, ids: &[String]) -> Result<Vec<String>, Ec2Error> {
        let mut done = Vec::new();
        for chunk in ids.chunks(DESCRIBE_BATCH) {
            let out = self.call("TerminateInstances", false, |c| {
                c.terminate_instances().set_instance_ids(Some(chunk.to_vec())).send()
            })?;
            done.extend(
                out.terminating_instances()
                    .iter()
                    .filter_map(|i| i.instance_id().map(str::to_string)),
            );
        }
        Ok(done)
    }

    /// DescribeInstanceTypes for `names`.
    fn describe_instance_types(&self, names: &[String]) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<sdk::types::InstanceType> = names.iter().map(|n| sdk::types::InstanceType::from(n.as_str())).collect();
        let out = self.call("DescribeInstanceTypes", true, |c| {
            c.describe_instance_types().set_instance_types(Some(types.clone())).send()
        })?;
        Ok(out.instance_types().iter().map(convert::instance_type).collect())
    }

    /// RequestSpotFleet (`request` type: filled once, never replenished) with one launch
    /// specification per override and ownership `tags` on the fleet and its instances.
    fn request_spot_fleet(&self, req: &SpotFleetRequest, tags: &[Tag]) -> Result<String, Ec2Error> {
        let (root_device, root_spec) = self.root(&req.spec)?;
        let instance_tags = sdk::types::SpotFleetTagSpecification::builder()
            .resource_type(sdk::types::ResourceType::Instance)
            .set_tags(Some(convert::sdk_tags(tags)))
            .build();
        let specs: Vec<sdk::types::SpotFleetLaunchSpecification> = req
            .overrides
            .iter()
            .map(|o| {
                let mut s = sdk::types::SpotFleetLaunchSpecification::builder()
                    .image_id(&req.spec.image_id)
                    .instance_type(sdk::types::InstanceType::from(o.instance_type.as_str()))
                    .set_subnet_id(o.subnet_id.clone().or_else(|| req.spec.subnet_ids.first().cloned()))
                    .set_weighted_capacity(o.weight)
                    .set_spot_price(o.max_price.clone())
                    .set_key_name(req.spec.key_name.clone())
                    .set_user_data(req.spec.user_data.as_deref().map(convert::base64))
                    .set_security_groups(Some(
                        req.spec
                            .security_group_ids
                            .iter()
                            .map(|g| sdk::types::GroupIdentifier::builder().group_id(g).build())
                            .collect(),
                    ))
                    .set_block_device_mappings(convert::root_mappings(&root_spec, root_device.as_deref()))
                    .set_ebs_optimized(req.spec.ebs_optimized)
                    .set_placement(req.spec.placement.as_ref().map(|p| {
                        sdk::types::SpotPlacement::builder()
                            .set_group_name(p.group_name.clone())
                            .set_tenancy(p.tenancy.as_deref().map(sdk::types::Tenancy::from))
                            .build()
                    }))
                    .tag_specifications(instance_tags.clone());
                if let Some(arn) = &req.spec.instance_profile_arn {
                    s = s.iam_instance_profile(sdk::types::IamInstanceProfileSpecification::builder().arn(arn).build());
                }
                s.build()
            })
            .collect();
        let mut config = sdk::types::SpotFleetRequestConfigData::builder()
            .iam_fleet_role(&req.fleet_role)
            .target_capacity(i32::try_from(req.total_units).unwrap_or(i32::MAX))
            .on_demand_target_capacity(i32::try_from(req.on_demand_units).unwrap_or(i32::MAX))
            .allocation_strategy(sdk::types::AllocationStrategy::from(req.allocation_strategy.as_str()))
            .r#type(sdk::types::FleetType::Request)
            .client_token(&req.request_id)
            .set_spot_price(req.spot_max_price.clone())
            .set_launch_specifications(Some(specs))
            .tag_specifications(convert::tag_spec(sdk::types::ResourceType::SpotFleetRequest, tags));
        if let Some(t) = req.valid_until {
            config = config
                .valid_until(aws_smithy_types::DateTime::from_secs(i64::try_from(t).unwrap_or(i64::MAX)))
                .terminate_instances_with_expiration(false);
        }
        let config = config.build();
        let out = self.call("RequestSpotFleet", false, |c| {
            c.request_spot_fleet().spot_fleet_request_config(config.clone()).send()
        })?;
        out.spot_fleet_request_id()
            .map(str::to_string)
            .ok_or_else(|| Ec2Error::Unavailable("RequestSpotFleet answered no fleet id".into()))
    }

    /// The `hfwasm:provider` tag of a Spot Fleet request.
    fn spot_fleet_owner(&self, fleet_id: &str) -> Result<Option<String>, Ec2Error> {
        let out = self.call("DescribeSpotFleetRequests", true, |c| {
            c.describe_spot_fleet_requests().spot_fleet_request_ids(fleet_id).send()
        });
        let out = match out {
            Ok(o) => o,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(out.spot_fleet_request_configs().first().and_then(|c| owner_tag(c.tags())))
    }

    fn create_launch_template(&self, req: &LaunchTemplateRequest, tags: &[Tag]) -> Result<String, Ec2Error> {
        self.launch_template(&req.request_id, &req.spec, tags, None)
    }

    /// The `hfwasm:provider` tag of a launch template (DescribeLaunchTemplates).
    fn launch_template_owner(&self, id: &str) -> Result<Option<String>, Ec2Error> {
        match self.call("DescribeLaunchTemplates", true, |c| {
            c.describe_launch_templates().launch_template_ids(id).send()
        }) {
            Ok(out) => Ok(out.launch_templates().first().and_then(|t| owner_tag(t.tags()))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete_launch_template(&self, id: &str) -> Result<(), Ec2Error> {
        self.call("DeleteLaunchTemplate", false, |c| {
            c.delete_launch_template().launch_template_id(id).send()
        })
        .map(drop)
    }

    /// DescribeFleets: the fleet's owner tag, whether it is `instant`, and the instances it
    /// lists (which, for `instant` fleets, is where they are reported).
    fn describe_fleet(&self, fleet_id: &str) -> Result<Option<super::FleetInfo>, Ec2Error> {
        let out = match self.call("DescribeFleets", true, |c| c.describe_fleets().fleet_ids(fleet_id).send()) {
            Ok(o) => o,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(out.fleets().first().map(|f| super::FleetInfo {
            owner: owner_tag(f.tags()),
            instant: f.r#type() == Some(&sdk::types::FleetType::Instant),
            instance_ids: f.instances().iter().flat_map(|i| i.instance_ids().iter().cloned()).collect(),
        }))
    }

    /// DescribeFleetInstances, every page (fleets of type `maintain` or `request`).
    fn fleet_instances(&self, fleet_id: &str) -> Result<Vec<String>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.call("DescribeFleetInstances", true, |c| {
                c.describe_fleet_instances().fleet_id(fleet_id).set_next_token(token.clone()).send()
            })?;
            out.extend(page.active_instances().iter().filter_map(|i| i.instance_id().map(str::to_string)));
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// DeleteFleets; a fleet AWS could not delete is an error naming it.
    fn delete_fleets(&self, ids: &[String], terminate_instances: bool) -> Result<(), Ec2Error> {
        let out = self.call("DeleteFleets", false, |c| {
            c.delete_fleets()
                .set_fleet_ids(Some(ids.to_vec()))
                .terminate_instances(terminate_instances)
                .send()
        })?;
        match out.unsuccessful_fleet_deletions().first() {
            None => Ok(()),
            Some(u) => Err(Ec2Error::Aws(AwsFault {
                code: u
                    .error()
                    .and_then(|e| e.code())
                    .map(|c| c.as_str().to_string())
                    .unwrap_or_else(|| "DeleteFleetError".into()),
                message: format!(
                    "fleet {}: {}",
                    u.fleet_id().unwrap_or("?"),
                    u.error().and_then(|e| e.message()).unwrap_or_default()
                ),
            })),
        }
    }

    /// DescribeSpotFleetInstances, every page.
    fn spot_fleet_instances(&self, fleet_id: &str) -> Result<Vec<String>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.call("DescribeSpotFleetInstances", true, |c| {
                c.describe_spot_fleet_instances()
                    .spot_fleet_request_id(fleet_id)
                    .set_next_token(token.clone())
                    .send()
            })?;
            out.extend(page.active_instances().iter().filter_map(|i| i.instance_id().map(str::to_string)));
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// CancelSpotFleetRequests, leaving the instances running.
    fn cancel_spot_fleets(&self, ids: &[String]) -> Result<(), Ec2Error> {
        self.call("CancelSpotFleetRequests", false, |c| {
            c.cancel_spot_fleet_requests()
                .set_spot_fleet_request_ids(Some(ids.to_vec()))
                .terminate_instances(false)
                .send()
        })
        .map(drop)
    }

    /// DescribeSpotInstanceRequests for `ids`.
    fn describe_spot_requests(&self, ids: &[String]) -> Result<Vec<SpotRequest>, Ec2Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(DESCRIBE_BATCH) {
            let f = Filter::builder()
                .name("spot-instance-request-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            let page = self.call("DescribeSpotInstanceRequests", true, |c| {
                c.describe_spot_instance_requests().filters(f.clone()).send()
            })?;
            out.extend(page.spot_instance_requests().iter().map(convert::spot_request));
        }
        Ok(out)
    }
}
