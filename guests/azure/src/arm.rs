//! Azure Resource Manager over the host's `http` capability: the few REST operations the
//! provider needs, with the API versions pinned, paging followed and ARM's errors mapped to
//! what HostFactory should hear. The host attaches the token; this code never sees one.

use hfwasm_guest_sdk::ProviderError;
use hfwasm_guest_sdk::http::{self, HttpError, Response};
use serde_json::Value;

/// Microsoft.Compute API version (virtualMachines, vmSizes, operations).
pub const COMPUTE_API: &str = "2024-07-01";
/// Microsoft.Network API version (networkInterfaces).
pub const NETWORK_API: &str = "2024-05-01";
/// Subscriptions API version (finding the default subscription under a managed identity).
pub const SUBSCRIPTIONS_API: &str = "2022-12-01";
/// Most pages followed in one listing (50,000 VMs at ARM's page size).
const MAX_PAGES: usize = 1000;

/// An ARM endpoint and subscription.
pub struct Arm {
    /// `https://management.azure.com` (no trailing slash).
    pub base: String,
    /// The subscription id.
    pub subscription: String,
}

/// What an ARM call answered that is not a failure of the call itself.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body (`Null` when empty).
    pub body: Value,
    /// `Azure-AsyncOperation` (or else `Location`) of a long-running operation.
    pub operation: Option<String>,
}

/// ARM's `{"error": {"code", "message"}}` of a failed call.
pub fn error_of(body: &Value) -> (String, String) {
    let e = &body["error"];
    (
        e["code"].as_str().unwrap_or("").to_string(),
        e["message"]
            .as_str()
            .or(body["error_description"].as_str())
            .unwrap_or("")
            .to_string(),
    )
}

/// A failed ARM call as HostFactory should hear it: out of capacity, a template that names
/// something wrong, or a dependency that may work later.
pub fn failure(what: &str, status: u16, body: &Value) -> ProviderError {
    let (code, message) = error_of(body);
    let text = format!("{what}: {status} {code}: {message}");
    match (status, code.as_str()) {
        (
            _,
            "OperationNotAllowed"
            | "QuotaExceeded"
            | "SkuNotAvailable"
            | "AllocationFailed"
            | "ZonalAllocationFailed"
            | "OverconstrainedAllocationRequest",
        ) => ProviderError::Capacity(text),
        (400 | 404, _) => ProviderError::InvalidTemplate(text),
        (401 | 403, _) => ProviderError::Unavailable(format!(
            "{text} (check the credentials and the principal's role on the subscription)"
        )),
        _ => ProviderError::Unavailable(text),
    }
}

fn http_failure(what: &str, e: HttpError) -> ProviderError {
    match e {
        HttpError::Denied(m) => ProviderError::Denied(format!("{what}: {m}")),
        HttpError::Failed(m) => ProviderError::Unavailable(format!("{what}: {m}")),
    }
}

fn answer(r: Response) -> Answer {
    let body = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()))
    };
    let operation = r
        .header("azure-asyncoperation")
        .or_else(|| r.header("location"))
        .map(str::to_string);
    Answer {
        status: r.status,
        body,
        operation,
    }
}

impl Arm {
    /// `/subscriptions/<id>/resourceGroups/<rg>/providers/<kind>/<name>`.
    pub fn id(&self, rg: &str, kind: &str, name: &str) -> String {
        format!("/subscriptions/{}/resourceGroups/{rg}/providers/{kind}/{name}", self.subscription)
    }

    /// Sends `method` to `path_or_url` (a path under the endpoint, or an absolute URL ARM
    /// gave: a nextLink or an operation). Any status comes back; only transport failures
    /// and denials are errors.
    pub fn call(&self, method: &str, path_or_url: &str, body: Option<&Value>) -> Result<Answer, ProviderError> {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let what = format!("{method} {}", url.split('?').next().unwrap_or(&url));
        let bytes = body.map(|b| b.to_string().into_bytes());
        let headers: &[(&str, &str)] = if bytes.is_some() {
            &[("content-type", "application/json"), ("accept", "application/json")]
        } else {
            &[("accept", "application/json")]
        };
        http::send(method, &url, headers, bytes.as_deref())
            .map(answer)
            .map_err(|e| http_failure(&what, e))
    }

    /// [`Arm::call`] for each (method, path, body), all on their way at once (up to 16; the
    /// host's grant caps how many run together), answers in order.
    pub fn call_all(&self, calls: &[(&str, String, Option<Value>)]) -> Vec<Result<Answer, ProviderError>> {
        let urls: Vec<String> = calls.iter().map(|(_, p, _)| format!("{}{p}", self.base)).collect();
        let bodies: Vec<Option<Vec<u8>>> = calls
            .iter()
            .map(|(_, _, b)| b.as_ref().map(|b| b.to_string().into_bytes()))
            .collect();
        const JSON: &[(&str, &str)] = &[("content-type", "application/json"), ("accept", "application/json")];
        let requests: Vec<http::Request<'_>> = calls
            .iter()
            .zip(&urls)
            .zip(&bodies)
            .map(|(((m, _, _), url), body)| http::Request {
                method: m,
                url,
                headers: if body.is_some() { JSON } else { &JSON[1..] },
                body: body.as_deref(),
            })
            .collect();
        http::send_all(&requests, 16)
            .into_iter()
            .zip(calls)
            .map(|(r, (m, p, _))| {
                r.map(answer)
                    .map_err(|e| http_failure(&format!("{m} {}", p.split('?').next().unwrap_or(p)), e))
            })
            .collect()
    }

    /// Like [`Arm::call`], but anything other than 2xx is an error.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, ProviderError> {
        let a = self.call(method, path, body)?;
        if (200..300).contains(&a.status) {
            Ok(a)
        } else {
            Err(failure(
                &format!("{method} {}", path.split('?').next().unwrap_or(path)),
                a.status,
                &a.body,
            ))
        }
    }

    /// Every item of a listing, following `nextLink`.
    pub fn list(&self, path: &str) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut next = Some(path.to_string());
        for _ in 0..MAX_PAGES {
            let Some(p) = next.take() else { break };
            let mut a = self.ok("GET", &p, None)?;
            if let Value::Array(items) = a.body["value"].take() {
                out.extend(items);
            }
            next = a.body["nextLink"].as_str().map(str::to_string);
        }
        Ok(out)
    }

    /// The VMs of resource group `rg`, with their instance views (power state).
    pub fn vms(&self, rg: &str) -> Result<Vec<Value>, ProviderError> {
        self.list(&format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE_API}&$expand=instanceView",
            self.subscription
        ))
    }

    /// The network interfaces of resource group `rg`.
    pub fn nics(&self, rg: &str) -> Result<Vec<Value>, ProviderError> {
        self.list(&format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces?api-version={NETWORK_API}",
            self.subscription
        ))
    }

    /// The VM sizes offered in `location`: (name, cores, MiB).
    pub fn vm_sizes(&self, location: &str) -> Result<Vec<(String, u32, u64)>, ProviderError> {
        Ok(self
            .list(&format!(
                "/subscriptions/{}/providers/Microsoft.Compute/locations/{location}/vmSizes?api-version={COMPUTE_API}",
                self.subscription
            ))?
            .iter()
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?.to_string(),
                    u32::try_from(s["numberOfCores"].as_u64()?).ok()?,
                    s["memoryInMB"].as_u64()?,
                ))
            })
            .collect())
    }

    /// The first subscription the credentials can see (IBM's `withDefaultSubscription`).
    pub fn default_subscription(base: &str) -> Result<String, ProviderError> {
        let arm = Arm {
            base: base.to_string(),
            subscription: String::new(),
        };
        arm.list(&format!("/subscriptions?api-version={SUBSCRIPTIONS_API}"))?
            .iter()
            .find_map(|s| s["subscriptionId"].as_str().map(str::to_string))
            .ok_or_else(|| ProviderError::Unavailable("the credentials see no Azure subscription (GET /subscriptions)".into()))
    }

    /// The state of a long-running operation: Ok(None) while in progress, Ok(Some(None))
    /// when it succeeded, Ok(Some(Some(message))) when it failed.
    pub fn operation(&self, url: &str) -> Result<Option<Option<String>>, ProviderError> {
        let a = self.call("GET", url, None)?;
        if a.status == 404 {
            return Ok(Some(Some("the operation is no longer known to Azure".into())));
        }
        if !(200..300).contains(&a.status) {
            return Err(failure("GET operation", a.status, &a.body));
        }
        Ok(match a.body["status"].as_str().unwrap_or("InProgress") {
            "Succeeded" => Some(None),
            "Failed" | "Canceled" => {
                let (code, message) = error_of(&a.body);
                Some(Some(format!("{code}: {message}")))
            }
            _ => None,
        })
    }
}
