//! The AWS guest's decisions on EC2 answers moto cannot produce (it has no pending period
//! and no spot interruptions; see docs/moto-notes.md): the real built-in guest,
//! linked to recorded responses instead of the SDK.

use std::sync::{Arc, Mutex};

use crate::capabilities::ec2::*;
use crate::domain::lifecycle::{MachineResult, RequestStatus};
use crate::domain::model::{CallContext, MachineRef};
use crate::engine::bindings::hostfactory::capabilities::autoscaling::{Group, GroupInstance, GroupRequest};
use crate::engine::bindings::hostfactory::capabilities::ec2::*;
use crate::engine::sandbox::HostWait;
use crate::runtime::{GuestCode, GuestEngine, GuestResources, PrecompiledCache, WasmProvider};
use crate::service::{LifecycleTimes, Provider, ProviderLoader, Service};
use crate::store::SqliteStore;

/// EC2 as recorded: a fixed set of instances and spot requests; launches are recorded.
#[derive(Default)]
struct Recorded {
    instances: Mutex<Vec<Instance>>,
    spot: Vec<SpotRequest>,
    terminated: Mutex<Vec<String>>,
    /// Answers to successive CreateFleet calls: instance types launched, and faults.
    fleet_answers: Mutex<Vec<(Vec<&'static str>, Vec<AwsFault>)>>,
    /// (total units, on-demand units) of each CreateFleet call.
    fleet_calls: Mutex<Vec<(u32, u32)>>,
    /// RunInstances fails with this fault, when set.
    run_fault: Option<AwsFault>,
    /// Spot Fleets requested: (id, request id, cancelled).
    fleets: Mutex<Vec<(String, String, bool)>>,
    /// Instances a Spot Fleet has launched by each successive DescribeSpotFleetInstances
    /// (a real fleet fills over minutes; moto's fills at once).
    fleet_arrivals: Mutex<Vec<u32>>,
    /// Auto Scaling groups made.
    groups: Mutex<Vec<RecordedGroup>>,
    /// Instances a group launches by each successive describe of it; each arrives
    /// `Pending` and is `InService` at the next describe (moto's are in service at once).
    group_arrivals: Mutex<Vec<u32>>,
}

/// An Auto Scaling group as recorded.
#[derive(Debug, Clone, Default)]
struct RecordedGroup {
    name: String,
    request: String,
    desired: u32,
    /// (instance id, lifecycle state).
    instances: Vec<(String, String)>,
    suspended: bool,
    deleted: bool,
    /// Its store tag (the ownership check reads it back).
    store: Option<String>,
}

fn poisoned<T>(_: T) -> Ec2Error {
    Ec2Error::Unavailable("poisoned".into())
}

impl crate::capabilities::autoscaling::AutoscalingApi for Recorded {
    fn region(&self) -> &str {
        "us-east-1"
    }
    fn create_group(&self, name: &str, req: &GroupRequest, _: (&str, &str), tags: &[Tag]) -> Result<(), Ec2Error> {
        self.groups.lock().map_err(poisoned)?.push(RecordedGroup {
            name: name.into(),
            request: req.request_id.clone(),
            desired: req.capacity,
            store: tags.iter().find(|t| t.key == TAG_STORE).map(|t| t.value.clone()),
            ..Default::default()
        });
        Ok(())
    }
    fn group_launch_template(&self, _: &str, _: &LaunchSpec, _: &str, _: &[Tag]) -> Result<String, Ec2Error> {
        Ok("lt-group".into())
    }
    fn describe_group(&self, name: &str) -> Result<Option<crate::capabilities::autoscaling::GroupInfo>, Ec2Error> {
        let mut groups = self.groups.lock().map_err(poisoned)?;
        let Some(g) = groups.iter_mut().find(|g| g.name == name && !g.deleted) else {
            return Ok(None);
        };
        // Last describe's arrivals are in service now; this describe's arrive pending.
        for i in &mut g.instances {
            i.1 = "InService".into();
        }
        let arriving = {
            let mut a = self.group_arrivals.lock().map_err(poisoned)?;
            if a.is_empty() || g.suspended { 0 } else { a.remove(0) }
        };
        let mut all = self.instances.lock().map_err(poisoned)?;
        for _ in 0..arriving {
            let id = format!("i-g{}", all.len());
            all.push(instance(&id, "running", &g.request, 1_000, None));
            g.instances.push((id, "Pending".into()));
        }
        Ok(Some(crate::capabilities::autoscaling::GroupInfo {
            group: Group {
                name: g.name.clone(),
                desired_capacity: g.desired,
                instances: g
                    .instances
                    .iter()
                    .map(|(id, state)| GroupInstance {
                        instance_id: id.clone(),
                        instance_type: "m5.large".into(),
                        lifecycle_state: state.clone(),
                        healthy: true,
                    })
                    .collect(),
                deleting: false,
            },
            owner: Some("test".into()),
            store: g.store.clone(),
            host_launch_template: Some("lt-group".into()),
        }))
    }
    fn set_desired(&self, name: &str, capacity: u32) -> Result<(), Ec2Error> {
        for g in self.groups.lock().map_err(poisoned)?.iter_mut().filter(|g| g.name == name) {
            g.desired = capacity;
        }
        Ok(())
    }
    fn suspend(&self, name: &str, _: &[&str]) -> Result<(), Ec2Error> {
        for g in self.groups.lock().map_err(poisoned)?.iter_mut().filter(|g| g.name == name) {
            g.suspended = true;
        }
        Ok(())
    }
    fn detach(&self, name: &str, ids: &[String]) -> Result<(), Ec2Error> {
        for g in self.groups.lock().map_err(poisoned)?.iter_mut().filter(|g| g.name == name) {
            g.instances.retain(|i| !ids.contains(&i.0));
            g.desired = g.desired.saturating_sub(u32::try_from(ids.len()).unwrap_or(u32::MAX));
        }
        Ok(())
    }
    fn delete_group(&self, name: &str) -> Result<(), Ec2Error> {
        for g in self.groups.lock().map_err(poisoned)?.iter_mut().filter(|g| g.name == name) {
            g.deleted = true;
        }
        Ok(())
    }
    fn describe_instances(&self, _: &[String]) -> Result<Vec<(String, GroupInstance)>, Ec2Error> {
        Ok(Vec::new())
    }
}

fn tag(k: &str, v: &str) -> Tag {
    Tag {
        key: k.into(),
        value: v.into(),
    }
}

fn instance(id: &str, state: &str, request: &str, launch: u64, spot: Option<&str>) -> Instance {
    Instance {
        instance_id: id.into(),
        instance_type: "m5.large".into(),
        state: state.into(),
        state_reason: None,
        private_dns_name: Some(format!("ip-{id}.ec2.internal")),
        private_ip: (state == "running").then(|| "10.0.0.9".into()),
        public_ip: None,
        public_dns_name: None,
        launch_time: launch,
        lifecycle: spot.map(|_| "spot".into()),
        spot_request_id: spot.map(str::to_string),
        tags: vec![tag(TAG_PROVIDER, "test"), tag(TAG_REQUEST, request)],
    }
}

impl Ec2Api for Recorded {
    fn region(&self) -> &str {
        "us-east-1"
    }
    fn run_instances(&self, req: &RunRequest, _tags: &[Tag]) -> Result<Vec<Instance>, Ec2Error> {
        if let Some(f) = &self.run_fault {
            return Err(Ec2Error::Aws(f.clone()));
        }
        // EC2 answers `pending` with no address yet; so does every describe until it boots.
        let mut all = self.instances.lock().map_err(|_| Ec2Error::Unavailable("poisoned".into()))?;
        let new: Vec<Instance> = (0..req.count)
            .map(|i| Instance {
                private_ip: None,
                ..instance(&format!("i-new{i}"), "pending", &req.request_id, 1_000, None)
            })
            .collect();
        all.extend(new.clone());
        Ok(new)
    }
    fn create_fleet(&self, req: &FleetRequest, _tags: &[Tag]) -> Result<FleetResult, Ec2Error> {
        fn poisoned<T>(_: T) -> Ec2Error {
            Ec2Error::Unavailable("poisoned".into())
        }
        self.fleet_calls
            .lock()
            .map_err(poisoned)?
            .push((req.total_units, req.on_demand_units));
        let mut answers = self.fleet_answers.lock().map_err(poisoned)?;
        if answers.is_empty() {
            return Err(Ec2Error::Denied("no recorded answer left".into()));
        }
        let (types, errors) = answers.remove(0);
        let mut all = self.instances.lock().map_err(poisoned)?;
        let mut ids = Vec::new();
        for ty in types {
            let id = format!("i-f{}", all.len());
            all.push(Instance {
                instance_type: ty.into(),
                ..instance(&id, "running", &req.request_id, 1_000, None)
            });
            ids.push(id);
        }
        Ok(FleetResult {
            fleet_id: format!("fleet-{}", ids.len()),
            instance_ids: ids,
            errors,
        })
    }
    fn describe_owned(&self, owner: &str, filter: &InstanceFilter) -> Result<Vec<Instance>, Ec2Error> {
        let all = self.instances.lock().map_err(|_| Ec2Error::Unavailable("poisoned".into()))?;
        // As the SDK client does: only instances carrying the owner's provider tag.
        Ok(all
            .iter()
            .filter(|i| i.tags.iter().any(|t| t.key == TAG_PROVIDER && t.value == owner))
            .filter(|i| match filter {
                InstanceFilter::Ids(ids) => ids.contains(&i.instance_id),
                InstanceFilter::Request(r) => i.tags.iter().any(|t| t.key == TAG_REQUEST && &t.value == r),
                InstanceFilter::Requests(rs) => i.tags.iter().any(|t| t.key == TAG_REQUEST && rs.contains(&t.value)),
                InstanceFilter::Owned => true,
            })
            .cloned()
            .collect())
    }
    fn terminate(&self, ids: &[String]) -> Result<Vec<String>, Ec2Error> {
        let mut all = self.instances.lock().map_err(|_| Ec2Error::Unavailable("poisoned".into()))?;
        for i in all.iter_mut().filter(|i| ids.contains(&i.instance_id)) {
            i.state = "shutting-down".into();
        }
        self.terminated
            .lock()
            .map_err(|_| Ec2Error::Unavailable("poisoned".into()))?
            .extend(ids.iter().cloned());
        Ok(ids.to_vec())
    }
    fn describe_instance_types(&self, names: &[String]) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        Ok(names
            .iter()
            .map(|n| InstanceTypeInfo {
                name: n.clone(),
                vcpus: 2,
                cores: 1,
                memory_mib: 8192,
            })
            .collect())
    }
    fn describe_spot_requests(&self, ids: &[String]) -> Result<Vec<SpotRequest>, Ec2Error> {
        Ok(self.spot.iter().filter(|s| ids.contains(&s.id)).cloned().collect())
    }
    fn request_spot_fleet(&self, req: &SpotFleetRequest, _: &[Tag]) -> Result<String, Ec2Error> {
        let mut fleets = self.fleets.lock().map_err(|_| Ec2Error::Unavailable("poisoned".into()))?;
        let id = format!("sfr-{}", fleets.len() + 1);
        fleets.push((id.clone(), req.request_id.clone(), false));
        Ok(id)
    }
    fn spot_fleet_owner(&self, fleet_id: &str) -> Result<Option<String>, Ec2Error> {
        let fleets = self.fleets.lock().map_err(|_| Ec2Error::Unavailable("poisoned".into()))?;
        Ok(fleets.iter().any(|f| f.0 == fleet_id).then(|| "test".to_string()))
    }
    fn spot_fleet_instances(&self, fleet_id: &str) -> Result<Vec<String>, Ec2Error> {
        fn poisoned<T>(_: T) -> Ec2Error {
            Ec2Error::Unavailable("poisoned".into())
        }
        let fleets = self.fleets.lock().map_err(poisoned)?;
        let request = fleets.iter().find(|f| f.0 == fleet_id).map(|f| f.1.clone()).unwrap_or_default();
        let mut all = self.instances.lock().map_err(poisoned)?;
        let arriving = {
            let mut a = self.fleet_arrivals.lock().map_err(poisoned)?;
            if a.is_empty() { 0 } else { a.remove(0) }
        };
        for _ in 0..arriving {
            let id = format!("i-sf{}", all.len());
            all.push(instance(&id, "running", &request, 1_000, Some("sir-sf")));
        }
        Ok(all
            .iter()
            .filter(|i| i.instance_id.starts_with("i-sf") && i.tags.iter().any(|t| t.key == TAG_REQUEST && t.value == request))
            .map(|i| i.instance_id.clone())
            .collect())
    }
    fn cancel_spot_fleets(&self, ids: &[String]) -> Result<(), Ec2Error> {
        let mut fleets = self.fleets.lock().map_err(|_| Ec2Error::Unavailable("poisoned".into()))?;
        for f in fleets.iter_mut().filter(|f| ids.contains(&f.0)) {
            f.2 = true;
        }
        Ok(())
    }
    // The built-in guest manages no launch templates or EC2 Fleets of its own (create-fleet
    // makes its transient template inside the host): these are exercised against moto.
    fn create_launch_template(&self, _: &LaunchTemplateRequest, _: &[Tag]) -> Result<String, Ec2Error> {
        Err(Ec2Error::Unavailable("not recorded".into()))
    }
    fn launch_template_owner(&self, _: &str) -> Result<Option<String>, Ec2Error> {
        Ok(None)
    }
    fn delete_launch_template(&self, _: &str) -> Result<(), Ec2Error> {
        Err(Ec2Error::Unavailable("not recorded".into()))
    }
    fn describe_fleet(&self, _: &str) -> Result<Option<FleetInfo>, Ec2Error> {
        Ok(None)
    }
    fn fleet_instances(&self, _: &str) -> Result<Vec<String>, Ec2Error> {
        Err(Ec2Error::Unavailable("not recorded".into()))
    }
    fn delete_fleets(&self, _: &[String], _: bool) -> Result<(), Ec2Error> {
        Err(Ec2Error::Unavailable("not recorded".into()))
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    ec2: Arc<Recorded>,
    engine: GuestEngine,
}

fn settings(terminate_on_reclaim: bool) -> serde_json::Value {
    serde_json::json!({
        "templates": [
            {"templateId": "od", "maxNumber": 10, "imageId": "ami-1", "subnetId": "subnet-1", "vmType": "m5.large"},
            {"templateId": "het", "maxNumber": 10, "imageId": "ami-1", "subnetId": "subnet-1", "vmTypes": {"m5.large": 1, "m5.xlarge": 2}, "priceType": "heterogeneous"},
            {"templateId": "sf", "maxNumber": 10, "imageId": "ami-1", "subnetId": "subnet-1", "vmTypes": {"m5.large": 1}, "priceType": "spot",
             "fleetRole": "arn:aws:iam::1:role/fleet", "spotFleetRequestExpiry": 2},
            {"templateId": "asg", "maxNumber": 10, "imageId": "ami-1", "subnetId": "subnet-1", "vmType": "m5.large",
             "providerApi": "ASG", "spotFleetRequestExpiry": 2}
        ],
        "spot_terminate_on_reclaim": terminate_on_reclaim
    })
}

impl Fixture {
    fn new(ec2: Recorded) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        Self {
            dir,
            store,
            ec2: Arc::new(ec2),
            engine: GuestEngine::new().expect("engine"),
        }
    }

    fn guest(&self) -> WasmProvider {
        let grants = [
            crate::capabilities::Capability::named("log"),
            crate::capabilities::Capability::named("kv"),
            crate::capabilities::Capability::named("ec2"),
            crate::capabilities::Capability::named("autoscaling"),
        ];
        let mut lent = crate::capabilities::Lent::default();
        lent.insert(self.ec2.clone() as Arc<dyn Ec2Api>);
        lent.insert(self.ec2.clone() as Arc<dyn crate::capabilities::autoscaling::AutoscalingApi>);
        let res = GuestResources {
            store: self.store.clone(),
            namespace: "test/aws".into(),
            owner: "test".into(),
            lent,
        };
        let grant = Ec2Grant {
            regions: vec![],
            instance_types: vec![],
            max_per_request: 100,
            launch: Default::default(),
        };
        let settings = crate::capabilities::Settings::from([
            ("ec2".to_string(), grant.to_settings()),
            ("autoscaling".to_string(), grant.to_settings()),
        ]);
        let cache = PrecompiledCache::new(self.dir.path().join("cache"));
        let code = GuestCode {
            name: "aws",
            wasm: crate::builtin::AWS,
            grants: &grants,
            settings: &settings,
            limits: Default::default(),
            coredump_dir: None,
        };
        WasmProvider::load(&self.engine, &cache, code, res).expect("aws guest loads").0
    }

    fn ctx(&self, now: u64, terminate_on_reclaim: bool) -> CallContext {
        CallContext {
            provider_instance: "test".into(),
            settings: settings(terminate_on_reclaim),
            now,
        }
    }

    fn service(&self, now: u64) -> Service<'_> {
        let loader: ProviderLoader<'_> = Box::new(move || Ok(Box::new(self.guest()) as Box<dyn Provider>));
        Service::new(
            self.store.as_ref(),
            loader,
            self.ctx(now, false),
            LifecycleTimes {
                pending_timeout_secs: 180,
                abandon_after_secs: 600,
                retention_secs: 7 * 86400,
                orphan_scan_secs: 600,
                claim_secs: 300,
            },
        )
    }
}

fn refs(names: &[(&str, &str)]) -> Vec<MachineRef> {
    names
        .iter()
        .map(|(n, id)| MachineRef {
            name: n.to_string(),
            machine_id: Some(id.to_string()),
        })
        .collect()
}

fn spot_marked() -> Recorded {
    Recorded {
        instances: Mutex::new(vec![
            instance("i-spot", "running", "req-1", 100, Some("sir-1")),
            instance("i-spot-ok", "running", "req-1", 100, Some("sir-2")),
            instance("i-od", "running", "req-1", 100, None),
            instance("i-term", "terminated", "req-1", 100, None),
        ]),
        spot: vec![
            SpotRequest {
                id: "sir-1".into(),
                state: "active".into(),
                status_code: Some("marked-for-termination".into()),
                instance_id: Some("i-spot".into()),
            },
            SpotRequest {
                id: "sir-2".into(),
                state: "active".into(),
                status_code: Some("fulfilled".into()),
                instance_id: Some("i-spot-ok".into()),
            },
        ],
        ..Default::default()
    }
}

#[test]
fn spot_interruptions_and_lost_hosts_are_reclaimed() {
    let f = Fixture::new(spot_marked());
    let mut guest = f.guest();
    let listed = refs(&[
        ("h-spot", "i-spot"),
        ("h-spot-ok", "i-spot-ok"),
        ("h-od", "i-od"),
        ("h-term", "i-term"),
        ("h-gone", "i-gone"),
    ]);
    let mut got: Vec<(String, u32)> = guest
        .reclaim_candidates(&f.ctx(200, false), &listed)
        .expect("reclaim")
        .into_iter()
        .map(|r| (r.name, r.grace_period))
        .collect();
    got.sort();
    // Marked for termination: two minutes' notice. Terminated or gone: now. The rest: kept.
    assert_eq!(
        got,
        [("h-gone".to_string(), 0), ("h-spot".to_string(), 120), ("h-term".to_string(), 0)]
    );
    assert!(
        f.ec2.terminated.lock().expect("lock").is_empty(),
        "nothing terminated without AWS_SPOT_TERMINATE_ON_RECLAIM"
    );
}

#[test]
fn spot_terminate_on_reclaim_terminates_at_once() {
    let f = Fixture::new(spot_marked());
    let mut guest = f.guest();
    let got = guest
        .reclaim_candidates(&f.ctx(200, true), &refs(&[("h-spot", "i-spot"), ("h-od", "i-od")]))
        .expect("reclaim");
    assert_eq!(
        got.iter().map(|r| (r.name.as_str(), r.grace_period)).collect::<Vec<_>>(),
        [("h-spot", 0)]
    );
    assert_eq!(*f.ec2.terminated.lock().expect("lock"), ["i-spot"]);
}

#[test]
fn pending_instances_stay_executing_then_fail_and_are_terminated_after_the_timeout() {
    let f = Fixture::new(Recorded::default());
    let (id, _) = f.service(1_000).request_machines("od", 2, None).expect("accepted");
    // Within AWS_INSTANCE_PENDING_TIMEOUT_SEC: still pending, never final.
    let r = f.service(1_100).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::Running);
    assert!(
        r[0].machines.iter().all(|m| m.result == MachineResult::Executing),
        "{:?}",
        r[0].machines
    );
    // One boots; the other is still pending past the timeout: it fails and is terminated.
    {
        let mut all = f.ec2.instances.lock().expect("lock");
        all[0].state = "running".into();
        all[0].private_ip = Some("10.0.0.10".into());
    }
    let r = f
        .service(1_000 + 181)
        .get_request_status(std::slice::from_ref(&id))
        .expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError);
    let results: Vec<(String, MachineResult)> = r[0].machines.iter().map(|m| (m.machine.machine_id.clone(), m.result)).collect();
    assert_eq!(
        results,
        [
            ("i-new0".to_string(), MachineResult::Succeed),
            ("i-new1".to_string(), MachineResult::Fail)
        ]
    );
    assert!(r[0].machines[1].message.contains("pending"), "{}", r[0].machines[1].message);
    assert_eq!(*f.ec2.terminated.lock().expect("lock"), ["i-new1"]);
}

fn capacity_fault() -> AwsFault {
    AwsFault {
        code: "InsufficientInstanceCapacity".into(),
        message: "no m5.large capacity in us-east-1a".into(),
    }
}

#[test]
fn heterogeneous_tops_up_with_on_demand_what_spot_could_not_supply() {
    let rec = Recorded::default();
    // Spot: one m5.large (1 unit) of 4, with a capacity error; on-demand top-up: 3 units.
    *rec.fleet_answers.lock().expect("lock") = vec![(vec!["m5.large"], vec![capacity_fault()]), (vec!["m5.xlarge", "m5.large"], vec![])];
    let f = Fixture::new(rec);
    let (id, _) = f.service(1_000).request_machines("het", 4, None).expect("accepted");
    assert_eq!(
        *f.ec2.fleet_calls.lock().expect("lock"),
        [(4, 0), (3, 3)],
        "spot first, then the missing 3 units on-demand"
    );
    let rec = crate::store::StateStore::request(f.store.as_ref(), &id)
        .expect("read")
        .expect("recorded");
    assert_eq!(rec.status, RequestStatus::Complete, "{rec:?}");
    let r = f.service(1_010).get_request_status(&[id]).expect("status");
    assert_eq!(r[0].status, RequestStatus::Complete, "{:?}", r[0]);
    assert_eq!(r[0].machines.len(), 3);
}

#[test]
fn partial_capacity_ends_complete_with_error_and_none_is_an_error() {
    let rec = Recorded::default();
    // Spot and the on-demand top-up both fall short: 1 + 1 of 4 units.
    *rec.fleet_answers.lock().expect("lock") = vec![
        (vec!["m5.large"], vec![capacity_fault()]),
        (vec!["m5.large"], vec![capacity_fault()]),
    ];
    let f = Fixture::new(rec);
    let (id, msg) = f.service(1_000).request_machines("het", 4, None).expect("partial is accepted");
    assert!(
        msg.contains("2 of 4 units") && msg.contains("InsufficientInstanceCapacity"),
        "{msg}"
    );
    let r = f.service(1_010).get_request_status(&[id]).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError);
    assert_eq!(r[0].machines.iter().filter(|m| m.result == MachineResult::Succeed).count(), 2);

    let f = Fixture::new(Recorded {
        run_fault: Some(capacity_fault()),
        ..Default::default()
    });
    match f.service(1_000).request_machines("od", 2, None) {
        Err(crate::service::ServiceError::Provider(crate::domain::model::ProviderError::Capacity(m))) => {
            assert!(m.contains("InsufficientInstanceCapacity"), "{m}")
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
}

#[test]
fn a_spot_fleet_that_fills_over_time_keeps_the_request_open_until_full() {
    let f = Fixture::new(Recorded {
        fleet_arrivals: Mutex::new(vec![1, 1, 1]),
        ..Default::default()
    });
    let (id, _) = f.service(1_000).request_machines("sf", 3, None).expect("accepted");
    let r = f.service(1_010).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!((r[0].status, r[0].machines.len()), (RequestStatus::Running, 2), "{:?}", r[0]);
    assert!(r[0].message.contains("2 of 3 units so far"), "{}", r[0].message);
    assert!(!f.ec2.fleets.lock().expect("lock")[0].2, "a filling fleet is left alone");
    let r = f.service(1_020).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!((r[0].status, r[0].machines.len()), (RequestStatus::Complete, 3), "{:?}", r[0]);
    let fleets = f.ec2.fleets.lock().expect("lock").clone();
    assert_eq!(fleets.len(), 1, "one fleet for the request, never a second");
    assert!(fleets[0].2, "a full fleet is cancelled");
}

#[test]
fn an_expired_spot_fleet_ends_the_request_with_what_it_delivered() {
    let f = Fixture::new(Recorded {
        fleet_arrivals: Mutex::new(vec![1]),
        ..Default::default()
    });
    let (id, _) = f.service(1_000).request_machines("sf", 3, None).expect("accepted");
    let r = f.service(1_060).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::Running, "{:?}", r[0]);
    // spotFleetRequestExpiry is 2 minutes: past it, the fleet is cancelled and the request
    // ends with the one host it got.
    let r = f.service(1_121).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError, "{:?}", r[0]);
    assert_eq!(r[0].machines.iter().filter(|m| m.result == MachineResult::Succeed).count(), 1);
    assert!(r[0].message.contains("expired with 1 of 3 units"), "{}", r[0].message);
    assert!(f.ec2.fleets.lock().expect("lock")[0].2, "an expired fleet is cancelled");
}

#[test]
fn a_group_fills_over_time_and_hosts_wait_until_in_service() {
    let f = Fixture::new(Recorded {
        group_arrivals: Mutex::new(vec![1, 2]),
        ..Default::default()
    });
    let (id, _) = f.service(1_000).request_machines("asg", 3, None).expect("accepted");
    let groups = f.ec2.groups.lock().expect("lock").clone();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        (groups[0].name.as_str(), groups[0].desired),
        (format!("hfwasm-test-{id}").as_str(), 3)
    );
    // One in service, two just launched: EC2 says running, the group says not ready yet.
    let r = f.service(1_010).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!((r[0].status, r[0].machines.len()), (RequestStatus::Running, 3), "{:?}", r[0]);
    let ready = r[0].machines.iter().filter(|m| m.result == MachineResult::Succeed).count();
    assert_eq!(ready, 1, "only the in-service host is given to HostFactory: {:?}", r[0]);
    assert!(r[0].message.contains("2 not in service yet"), "{}", r[0].message);
    assert!(!f.ec2.groups.lock().expect("lock")[0].suspended, "a filling group is left alone");
    let r = f.service(1_020).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!((r[0].status, r[0].machines.len()), (RequestStatus::Complete, 3), "{:?}", r[0]);
    let g = f.ec2.groups.lock().expect("lock")[0].clone();
    assert!(g.suspended, "a full group stops replacing: {g:?}");
    assert_eq!((g.desired, g.deleted), (3, false));
}

#[test]
fn a_group_past_its_expiry_keeps_what_it_got_or_goes() {
    let f = Fixture::new(Recorded {
        group_arrivals: Mutex::new(vec![1]),
        ..Default::default()
    });
    let (id, _) = f.service(1_000).request_machines("asg", 3, None).expect("accepted");
    let r = f.service(1_060).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::Running, "{:?}", r[0]);
    // spotFleetRequestExpiry is 2 minutes: past it the group is lowered to the one host it
    // has and stops; the request ends with that host.
    let r = f.service(1_121).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError, "{:?}", r[0]);
    assert_eq!(r[0].machines.iter().filter(|m| m.result == MachineResult::Succeed).count(), 1);
    assert!(r[0].message.contains("stopped filling with 1 of 3 units"), "{}", r[0].message);
    let g = f.ec2.groups.lock().expect("lock")[0].clone();
    assert_eq!((g.desired, g.suspended, g.deleted), (1, true, false), "{g:?}");

    // A group that got nothing at all is deleted, and the request fails.
    let (id, _) = f.service(2_000).request_machines("asg", 2, None).expect("accepted");
    let r = f.service(2_121).get_request_status(std::slice::from_ref(&id)).expect("status");
    assert_eq!(r[0].status, RequestStatus::CompleteWithError, "{:?}", r[0]);
    assert!(r[0].machines.is_empty(), "{:?}", r[0]);
    let g = f.ec2.groups.lock().expect("lock")[1].clone();
    assert!(g.deleted, "{g:?}");
}

#[test]
fn calls_outside_the_grant_are_denied_not_trapped() {
    let recorded = Recorded::default();
    recorded.instances.lock().expect("lock").extend([
        instance("i-mine", "running", "req-1", 1_000, None),
        Instance {
            tags: vec![tag(TAG_PROVIDER, "other-cluster"), tag(TAG_REQUEST, "req-9")],
            ..instance("i-theirs", "running", "req-9", 1_000, None)
        },
    ]);
    let api: Arc<dyn Ec2Api> = Arc::new(recorded);
    let grant = |regions: &[&str]| Ec2Grant {
        regions: regions.iter().map(|r| r.to_string()).collect(),
        instance_types: vec!["m5.large".into()],
        max_per_request: 4,
        launch: Default::default(),
    };
    let cap = |g: Ec2Grant| GuestEc2::new(Some(api.clone()), g, "test".into(), "store-1".into(), HostWait::default());
    let run = |ty: &str, count: u32| RunRequest {
        request_id: "req-2".into(),
        template_id: "t".into(),
        instance_type: ty.into(),
        count,
        spec: LaunchSpec {
            image_id: "ami-1".into(),
            subnet_ids: vec!["subnet-1".into()],
            security_group_ids: vec![],
            key_name: None,
            instance_profile_arn: None,
            user_data: None,
            tags: vec![],
            root_volume: None,
            launch_template_id: None,
            launch_template_version: None,
            ebs_optimized: None,
            placement: None,
            network_interfaces: None,
        },
        spot_max_price: None,
    };
    let denied = |r: Result<Vec<Instance>, Ec2Error>| match r {
        Err(Ec2Error::Denied(m)) => m,
        other => panic!("expected a denied error, got {other:?}"),
    };
    let mut ec2 = cap(grant(&[]));
    let m = denied(ec2.run_instances(run("p4d.24xlarge", 1)));
    assert!(m.contains("p4d.24xlarge") && m.contains("not granted"), "{m}");
    let m = denied(ec2.run_instances(run("m5.large", 5)));
    assert!(m.contains("5 instances") && m.contains("1..=4"), "{m}");
    let m = denied(cap(grant(&["eu-west-1"])).run_instances(run("m5.large", 1)));
    assert!(m.contains("region us-east-1 is not granted") && m.contains("eu-west-1"), "{m}");
    // Another provider instance's machine can be neither terminated nor seen.
    match ec2.terminate_instances(vec!["i-mine".into(), "i-theirs".into()]) {
        Err(Ec2Error::Denied(m)) => assert!(m.contains("i-theirs") && !m.contains("i-mine"), "{m}"),
        other => panic!("expected a denied error, got {other:?}"),
    }
    let seen = ec2.describe_instances(InstanceFilter::Owned).expect("describe");
    assert_eq!(seen.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), ["i-mine"]);
    // Within the grant the same capability works.
    assert_eq!(ec2.run_instances(run("m5.large", 2)).expect("granted").len(), 2);
}
