//! The Azure guest's decisions on ARM answers the fake does not give (a NIC whose address
//! comes later, a VM whose create operation fails with its own reason): the real built-in
//! guest, its `http` capability answered by recorded ARM responses instead of the network.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::capabilities::http::{HttpBackend, HttpGrant, Origin};
use crate::domain::model::{CallContext, MachineState, ProvisionRequest, StatusQuery};
use crate::runtime::{GuestCode, GuestEngine, GuestResources, PrecompiledCache, WasmProvider};
use crate::service::Provider;
use crate::store::SqliteStore;

const ARM: &str = "http://arm.test";
const SUB: &str = "/subscriptions/sub-1/resourceGroups/rg/providers";

/// ARM as recorded: the NICs and VMs it holds, what it answers to each PUT, and every
/// request it was sent (method, path).
#[derive(Default)]
struct Recorded {
    nics: Mutex<Vec<Value>>,
    vms: Mutex<Vec<Value>>,
    /// A NIC PUT's answer leaves out the private address (Azure has not given one yet).
    nic_without_address: Mutex<bool>,
    /// The status of every create operation.
    operation: Mutex<Value>,
    seen: Mutex<Vec<(String, String)>>,
}

fn reply(status: u16, body: &Value, operation: Option<&str>) -> Result<http::Response<Bytes>, String> {
    let mut r = http::Response::builder().status(status).header("content-type", "application/json");
    if let Some(op) = operation {
        r = r.header("azure-asyncoperation", op);
    }
    r.body(Bytes::from(body.to_string())).map_err(|e| e.to_string())
}

impl HttpBackend for Recorded {
    fn answer(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, String> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        self.seen.lock().map_err(|e| e.to_string())?.push((method.clone(), path.clone()));
        let body: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        let lock = |m: &Mutex<Vec<Value>>| m.lock().map(|v| v.clone()).unwrap_or_default();
        match (method.as_str(), path.as_str()) {
            ("GET", p) if p.ends_with("/networkInterfaces") => reply(200, &json!({"value": lock(&self.nics)}), None),
            ("GET", p) if p.ends_with("/virtualMachines") => reply(200, &json!({"value": lock(&self.vms)}), None),
            ("GET", p) if p.contains("/operations/") => reply(200, &self.operation.lock().map(|o| o.clone()).unwrap_or_default(), None),
            ("PUT", p) if p.contains("/networkInterfaces/") => {
                let mut nic = json!({"id": p, "name": name, "tags": body["tags"], "properties": body["properties"]});
                if !*self.nic_without_address.lock().map_err(|e| e.to_string())? {
                    nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] = json!("10.9.0.7");
                }
                self.nics.lock().map_err(|e| e.to_string())?.push(nic.clone());
                reply(201, &nic, None)
            }
            ("PUT", p) if p.contains("/virtualMachines/") => {
                let mut vm = json!({"id": p, "name": name, "tags": body["tags"], "properties": body["properties"]});
                vm["properties"]["provisioningState"] = json!("Creating");
                self.vms.lock().map_err(|e| e.to_string())?.push(vm.clone());
                reply(
                    201,
                    &vm,
                    Some(&format!(
                        "{ARM}/subscriptions/sub-1/providers/Microsoft.Compute/locations/eastus/operations/op-{name}"
                    )),
                )
            }
            ("DELETE", _) => reply(202, &Value::Null, None),
            _ => reply(404, &json!({"error": {"code": "NotFound", "message": path}}), None),
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    arm: Arc<Recorded>,
    engine: GuestEngine,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        Self {
            dir,
            store,
            arm: Arc::new(Recorded::default()),
            engine: GuestEngine::new().expect("engine"),
        }
    }

    fn guest(&self) -> WasmProvider {
        let grants = ["log", "kv", "http"].map(crate::capabilities::Capability::named);
        let mut lent = crate::capabilities::Lent::default();
        lent.insert(self.arm.clone() as Arc<dyn HttpBackend>);
        let res = GuestResources {
            store: self.store.clone(),
            namespace: "test/azure".into(),
            owner: "test".into(),
            lent,
        };
        let grant = HttpGrant::allowing(vec![Origin {
            url: ARM.into(),
            methods: Vec::new(),
            paths: vec!["/subscriptions/sub-1/".into()],
            auth: Default::default(),
        }]);
        let settings = crate::capabilities::Settings::from([("http".to_string(), grant.to_settings())]);
        let code = GuestCode {
            name: "azure",
            wasm: crate::builtin::AZURE,
            grants: &grants,
            settings: &settings,
            limits: Default::default(),
            coredump_dir: None,
        };
        WasmProvider::load(&self.engine, &PrecompiledCache::new(self.dir.path().join("cache")), code, res)
            .expect("azure guest loads")
            .0
    }

    fn ctx(&self) -> CallContext {
        CallContext {
            provider_instance: "test".into(),
            settings: json!({
                "region": "eastus", "subscription": "sub-1", "arm_endpoint": ARM,
                "templates": [{"templateId": "vm", "maxNumber": 10, "vmType": "Standard_D2s_v5", "imageId": "img",
                               "resourceGroup": "rg", "virtualNetwork": "net", "subnet": "s1",
                               "sshPublicKeyContent": "ssh-ed25519 AAAA test"}]
            }),
            now: 1_800_000_000,
        }
    }

    fn puts(&self, kind: &str) -> usize {
        self.arm
            .seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(m, p)| m == "PUT" && p.contains(kind))
            .count()
    }
}

fn request(count: u32) -> ProvisionRequest {
    ProvisionRequest {
        request_id: "req-1".into(),
        template_id: "vm".into(),
        count,
        rc_account: None,
    }
}

impl Fixture {
    /// One status call for `request(1)` with `known` recorded.
    fn status(&self, known: &[crate::domain::model::Machine]) -> crate::domain::model::ProvisionProgress {
        let q = StatusQuery {
            request: request(1),
            known: known.to_vec(),
        };
        self.guest()
            .requests_status(&self.ctx(), &[q])
            .expect("status")
            .remove(0)
            .expect("progress")
    }

    /// DELETEs of VMs sent so far.
    fn vm_deletes(&self) -> usize {
        self.arm
            .seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|(m, p)| m == "DELETE" && p.contains("/virtualMachines/"))
            .count()
    }
}

#[test]
fn a_nic_without_its_address_yet_leaves_the_vm_to_the_next_status_call() {
    let f = Fixture::new();
    *f.arm.nic_without_address.lock().expect("flag") = true;
    let p = f.guest().request_machines(&f.ctx(), &request(1)).expect("request");
    assert!(p.machines.is_empty() && p.outstanding == 1, "no VM without its host name: {p:?}");
    assert_eq!((f.puts("/networkInterfaces/"), f.puts("/virtualMachines/")), (1, 0));
    // Azure gives the address; the next status call makes the VM, named from it, and does
    // not make the NIC again.
    for nic in f.arm.nics.lock().expect("nics").iter_mut() {
        nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] = json!("10.9.0.8");
    }
    let p = f.status(&[]);
    assert_eq!((f.puts("/networkInterfaces/"), f.puts("/virtualMachines/")), (1, 1));
    assert_eq!(p.machines.len(), 1, "{p:?}");
    assert_eq!(
        (p.machines[0].name.as_str(), p.machines[0].state),
        ("host-10-9-0-8", MachineState::Pending)
    );
    assert_eq!(p.outstanding, 0, "creation finished: {p:?}");
    let vm = f.arm.vms.lock().expect("vms")[0].clone();
    assert!(vm["id"].as_str().is_some_and(|id| id.starts_with(SUB)), "{vm}");
}

#[test]
fn a_vm_that_fails_is_reported_with_its_operations_reason_and_deleted() {
    let f = Fixture::new();
    let p = f.guest().request_machines(&f.ctx(), &request(1)).expect("request");
    assert_eq!(p.machines.len(), 1);
    // Azure's create operation fails; the VM says only that it failed.
    *f.arm.operation.lock().expect("op") =
        json!({"status": "Failed", "error": {"code": "OSProvisioningTimedOut", "message": "OS provisioning did not finish in time."}});
    for vm in f.arm.vms.lock().expect("vms").iter_mut() {
        vm["properties"]["provisioningState"] = json!("Failed");
    }
    let p = f.status(&p.machines);
    let m = &p.machines[0];
    assert_eq!(m.state, MachineState::Failed, "{m:?}");
    assert!(m.message.as_deref().is_some_and(|t| t.contains("OSProvisioningTimedOut")), "{m:?}");
    assert_eq!(f.vm_deletes(), 1, "the failed VM is deleted once");
    // Asked again, it stays failed with the same reason and is not deleted twice.
    let again = f.status(&p.machines);
    assert_eq!(again.machines[0].message, m.message);
    assert_eq!(f.vm_deletes(), 1);
}
