#!/usr/bin/env python3
"""A stateful fake of Azure Resource Manager for hfwasm's Azure tests. It is a FAKE, not an
emulator: written by hand from Azure's published REST API specification
(Azure/azure-rest-api-specs: specification/compute/resource-manager/Microsoft.Compute
`virtualMachines`, `vmSizes`, `operations`; specification/network/resource-manager/
Microsoft.Network `networkInterfaces`; the ARM async-operation and throttling guidelines),
serving only what the Azure guest uses, with the shapes and status codes the spec gives:

- Entra ID client-credentials token endpoint (`POST /<tenant>/oauth2/v2.0/token`); every ARM
  call needs `Authorization: Bearer <a token it issued>` (401 otherwise).
- `api-version` is required and must be the one pinned per resource provider (400 otherwise).
- Network interfaces: PUT (201 created / 200 updated, private IP allocated from the subnet
  at once), GET, list per resource group, DELETE (400 `NicInUse` while a VM holds it).
- Virtual machines: PUT (201, `provisioningState: Creating`, `Azure-AsyncOperation` header,
  Succeeded after `--vm-ready-secs`); referenced image, subnet, NSG, NIC, size checked (404 /
  400 as ARM answers); a core quota per region (409 `OperationNotAllowed`); Spot priority with
  eviction policy and max price; GET, instanceView, list per resource group; DELETE (202 with
  `Location` and `Azure-AsyncOperation`, `Deleting` until `--delete-secs`, the OS disk and
  NICs removed with it when their `deleteOption` is `Delete`).
- Async operations (`.../locations/<loc>/operations/<id>`): InProgress, Succeeded, Failed with
  the error.
- VM size catalogue (`.../locations/<loc>/vmSizes`).

Test controls under `/_fake/` (no auth): `state` (everything, for leak checks), `throttle`
(the next N ARM calls get 429 with Retry-After), `fail-next-vm` (the next VM ends Failed with
the given error), `evict/<rg>/<vm>` (a Spot eviction, as its eviction policy says),
`requests` (every call seen: method, path, status), `revoke-tokens` (every token issued so
far is refused from now on), `plant` (a running VM with its NIC and
disk made behind hfwasm's back, with the given tags and creation time).

What it cannot show: real latencies and eventual consistency (a list sees a PUT at once),
ARM's many other validations, deployments, public IPs, extensions, real token lifetimes and
claims, region capacity beyond the one core quota, Scheduled Events (the 30 s eviction notice
seen inside the VM).
"""

import argparse
import base64
import ipaddress
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

COMPUTE_API = "2024-07-01"
NETWORK_API = "2024-05-01"
CANONICAL_DISKS = {"Standard_LRS", "Premium_LRS", "StandardSSD_LRS", "UltraSSD_LRS", "Premium_ZRS", "StandardSSD_ZRS"}


class World:
    """Everything the fake holds, under one lock."""

    def __init__(self, cfg, args):
        self.lock = threading.RLock()  # reentrant: replies log under it
        self.cfg = cfg
        self.args = args
        self.tokens = set()
        self.token_requests = 0
        self.nics = {}  # lower-case id -> resource
        self.vms = {}  # lower-case id -> (resource, meta)
        self.disks = {}  # lower-case id -> resource
        self.ops = {}  # op id -> dict(status, error, done_at, on_done)
        self.ip_next = {}
        self.throttle = 0
        self.retry_after = 1
        self.fail_next = None
        self.requests = []


def arm_error(code, message):
    return {"error": {"code": code, "message": message}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    world: World = None

    def log_message(self, fmt, *a):  # quiet; the test reads /_fake/requests
        pass

    # ----- plumbing
    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        return json.loads(raw)

    def reply(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        # Recorded before the answer leaves: a client done with its call finds it listed.
        w = self.world
        with w.lock:
            w.requests.append({"method": self.command, "path": urlsplit(self.path).path, "status": status})
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def base(self):
        return f"http://{self.headers.get('Host')}"

    def do_GET(self):
        self.route("GET")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")

    def do_POST(self):
        self.route("POST")

    def do_PATCH(self):
        self.route("PATCH")

    # ----- routing
    def route(self, method):
        try:
            self.route_inner(method)
        except Exception as e:  # a fake's bug must show, not hang the client
            self.reply(500, arm_error("FakeBug", repr(e)))

    def route_inner(self, method):
        w = self.world
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if parts and parts[0] == "_fake":
            return self.control(method, parts[1:])
        if len(parts) >= 3 and parts[1] == "oauth2" and parts[-1] == "token" and method == "POST":
            return self.token(parts[0])
        auth = self.headers.get("Authorization", "")
        with w.lock:
            ok = auth.startswith("Bearer ") and auth[7:] in w.tokens
        if not ok:
            return self.reply(401, arm_error("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or invalid."))
        with w.lock:
            if w.throttle > 0:
                w.throttle -= 1
                ra = w.retry_after
                throttled = True
            else:
                throttled = False
        if throttled:
            return self.reply(429, arm_error("TooManyRequests", "Too many requests (fake throttle)."), {"Retry-After": str(ra)})
        if len(parts) < 2 or parts[0].lower() != "subscriptions" or parts[1] != w.cfg["subscription"]:
            return self.reply(404, arm_error("SubscriptionNotFound", f"The subscription '{parts[1] if len(parts) > 1 else ''}' could not be found."))
        lower = [p.lower() for p in parts]
        # /subscriptions/{s}/providers/Microsoft.Compute/locations/{loc}/(vmSizes|operations/{id})
        if len(parts) >= 6 and lower[2] == "providers" and lower[4] == "locations":
            api = COMPUTE_API if lower[3] == "microsoft.compute" else NETWORK_API
            if (e := self.check_api(q, api)) is not None:
                return e
            if lower[6:7] == ["vmsizes"] and method == "GET":
                if parts[5] != w.cfg["location"]:
                    return self.reply(200, {"value": []})
                return self.reply(200, {"value": w.cfg["vm_sizes"]})
            if lower[6:7] == ["operations"] and len(parts) == 8 and method == "GET":
                return self.operation(parts[7])
            return self.reply(404, arm_error("NotFound", url.path))
        # /subscriptions/{s}/resourceGroups/{rg}/providers/{ns}/{type}[/{name}[/instanceView]]
        if len(parts) >= 6 and lower[2] == "resourcegroups" and lower[4] == "providers":
            rg = parts[3]
            if rg.lower() not in {g.lower() for g in w.cfg["resource_groups"]}:
                return self.reply(404, arm_error("ResourceGroupNotFound", f"Resource group '{rg}' could not be found."))
            kind = "/".join(lower[5:7])
            api = {"microsoft.compute/virtualmachines": COMPUTE_API, "microsoft.network/networkinterfaces": NETWORK_API}.get(kind)
            if api is None:
                return self.reply(404, arm_error("NotFound", f"the fake serves no {kind}"))
            if (e := self.check_api(q, api)) is not None:
                return e
            rid = "/" + "/".join(parts[:8]) if len(parts) >= 8 else None
            if kind == "microsoft.network/networkinterfaces":
                if len(parts) == 7 and method == "GET":
                    return self.list_rg(w.nics, rg, lambda r: r)
                if len(parts) == 8:
                    return {"PUT": self.put_nic, "GET": self.get_nic, "DELETE": self.delete_nic}.get(method, self.bad_method)(rid, rg, parts[7])
            if kind == "microsoft.compute/virtualmachines":
                if len(parts) == 7 and method == "GET":
                    return self.list_rg(w.vms, rg, lambda v: self.vm_view(v, q.get("$expand") == "instanceView"))
                if len(parts) == 9 and lower[8] == "instanceview" and method == "GET":
                    with w.lock:
                        v = w.vms.get(rid.lower())
                    if v is None:
                        return self.reply(404, arm_error("ResourceNotFound", f"The Resource '{rid}' was not found."))
                    return self.reply(200, self.instance_view(v))
                if len(parts) == 8:
                    return {"PUT": self.put_vm, "GET": self.get_vm, "DELETE": self.delete_vm}.get(method, self.bad_method)(rid, rg, parts[7])
        return self.reply(404, arm_error("NotFound", f"the fake serves no {url.path}"))

    def bad_method(self, *_):
        return self.reply(405, arm_error("MethodNotAllowed", self.command))

    def check_api(self, q, want):
        have = q.get("api-version")
        if have is None:
            return self.reply(400, arm_error("MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests."))
        if have != want:
            return self.reply(400, arm_error("InvalidApiVersionParameter", f"The api-version '{have}' is invalid. The supported version here is '{want}'."))
        return None

    # ----- token endpoint
    def token(self, tenant):
        w = self.world
        n = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(n).decode()).items()}
        creds = w.cfg["principal"]
        with w.lock:
            w.token_requests += 1
        if (
            tenant != creds["tenant"]
            or form.get("grant_type") != "client_credentials"
            or form.get("client_id") != creds["client"]
            or form.get("client_secret") != creds["secret"]
        ):
            # Entra echoes nothing secret, but a careless proxy might: this one echoes the
            # form, so a test sees that the guest never gets this body.
            return self.reply(401, {"error": "invalid_client", "error_description": f"AADSTS7000215: Invalid client secret provided. form={form}"})
        tok = secrets.token_hex(16)
        with w.lock:
            w.tokens.add(tok)
        return self.reply(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": tok})

    # ----- async operations
    def new_op(self, loc, duration, on_done=None, error=None):
        w = self.world
        op = str(uuid.uuid4())
        with w.lock:
            w.ops[op] = {"done_at": time.time() + duration, "on_done": on_done, "error": error, "status": "InProgress"}
        url = f"{self.base()}/subscriptions/{w.cfg['subscription']}/providers/Microsoft.Compute/locations/{loc}/operations/{op}?api-version={COMPUTE_API}"
        return op, url

    def settle(self):
        """Completes every operation whose time has come (under the lock)."""
        w = self.world
        now = time.time()
        for op in w.ops.values():
            if op["status"] == "InProgress" and now >= op["done_at"]:
                op["status"] = "Failed" if op["error"] else "Succeeded"
                if op["on_done"]:
                    op["on_done"]()
                    op["on_done"] = None

    def operation(self, op_id):
        w = self.world
        with w.lock:
            self.settle()
            op = w.ops.get(op_id)
            if op is None:
                body = None
            else:
                body = {"name": op_id, "status": op["status"], "startTime": "2026-01-01T00:00:00Z"}
                if op["status"] == "Failed":
                    body["error"] = op["error"]
        if body is None:
            return self.reply(404, arm_error("NotFound", f"operation {op_id}"))
        return self.reply(200, body)

    # ----- network interfaces
    def alloc_ip(self, subnet_id):
        w = self.world
        prefix = None
        for vnet in w.cfg["virtual_networks"]:
            for sn in vnet["subnets"]:
                sid = f"/subscriptions/{w.cfg['subscription']}/resourceGroups/{vnet['resource_group']}/providers/Microsoft.Network/virtualNetworks/{vnet['name']}/subnets/{sn['name']}"
                if sid.lower() == subnet_id.lower():
                    prefix = sn["prefix"]
        if prefix is None:
            return None
        net = ipaddress.ip_network(prefix)
        i = w.ip_next.get(prefix, 4)  # Azure keeps .0-.3
        w.ip_next[prefix] = i + 1
        return str(net.network_address + i)

    def nsg_exists(self, nsg_id):
        w = self.world
        return any(
            f"/subscriptions/{w.cfg['subscription']}/resourceGroups/{g['resource_group']}/providers/Microsoft.Network/networkSecurityGroups/{g['name']}".lower() == nsg_id.lower()
            for g in w.cfg["security_groups"]
        )

    def put_nic(self, rid, rg, name):
        w = self.world
        body = self.body_json() or {}
        if not body.get("location"):
            return self.reply(400, arm_error("LocationRequired", "The location property is required for this definition."))
        cfgs = body.get("properties", {}).get("ipConfigurations") or []
        if not cfgs:
            return self.reply(400, arm_error("InvalidRequestFormat", "ipConfigurations is required."))
        subnet = ((cfgs[0].get("properties") or {}).get("subnet") or {}).get("id", "")
        nsg = ((body.get("properties") or {}).get("networkSecurityGroup") or {}).get("id")
        with w.lock:
            existing = w.nics.get(rid.lower())
            if existing is None:
                ip = self.alloc_ip(subnet)
                if ip is None:
                    return self.reply(400, arm_error("InvalidResourceReference", f"Resource {subnet} referenced by resource {rid} was not found."))
            else:
                ip = existing["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
            if nsg and not self.nsg_exists(nsg):
                return self.reply(400, arm_error("InvalidResourceReference", f"Resource {nsg} referenced by resource {rid} was not found."))
            res = {
                "id": rid,
                "name": name,
                "type": "Microsoft.Network/networkInterfaces",
                "location": body["location"],
                "tags": body.get("tags") or {},
                "properties": {
                    "provisioningState": "Succeeded",
                    "ipConfigurations": [
                        {
                            "name": cfgs[0].get("name", "ipconfig1"),
                            "properties": {"privateIPAddress": ip, "privateIPAllocationMethod": "Dynamic", "subnet": {"id": subnet}, "primary": True},
                        }
                    ],
                    "networkSecurityGroup": {"id": nsg} if nsg else None,
                    "virtualMachine": existing["properties"].get("virtualMachine") if existing else None,
                },
            }
            w.nics[rid.lower()] = res
        return self.reply(200 if existing else 201, res)

    def get_nic(self, rid, rg, name):
        with self.world.lock:
            r = self.world.nics.get(rid.lower())
        if r is None:
            return self.reply(404, arm_error("ResourceNotFound", f"The Resource '{rid}' was not found."))
        return self.reply(200, r)

    def delete_nic(self, rid, rg, name):
        w = self.world
        with w.lock:
            self.settle()
            r = w.nics.get(rid.lower())
            if r is None:
                return self.reply(204)
            if r["properties"].get("virtualMachine"):
                return self.reply(400, arm_error("NicInUse", f"Network Interface {rid} is used by existing resource {r['properties']['virtualMachine']['id']}."))
            del w.nics[rid.lower()]
        return self.reply(200)

    def list_rg(self, table, rg, view):
        w = self.world
        with w.lock:
            self.settle()
            items = [view(v) for k, v in table.items() if f"/resourcegroups/{rg.lower()}/" in k]
        # One page per 50, as ARM pages; the client must follow nextLink.
        page = int(parse_qs(urlsplit(self.path).query).get("page", ["0"])[0])
        chunk = items[page * 50 : (page + 1) * 50]
        out = {"value": chunk}
        if (page + 1) * 50 < len(items):
            path = urlsplit(self.path)
            out["nextLink"] = f"{self.base()}{path.path}?{path.query.split('&page=')[0]}&page={page + 1}"
        return self.reply(200, out)

    # ----- virtual machines
    def vm_view(self, v, expand=False):
        res, meta = v
        out = json.loads(json.dumps(res))
        if expand:
            out["properties"]["instanceView"] = self.instance_view(v)
        return out

    def instance_view(self, v):
        res, meta = v
        ps = res["properties"]["provisioningState"]
        statuses = [{"code": f"ProvisioningState/{ps.lower()}", "level": "Error" if ps == "Failed" else "Info"}]
        if ps == "Succeeded":
            statuses.append({"code": f"PowerState/{meta['power']}", "level": "Info"})
        return {"computerName": res["properties"]["osProfile"]["computerName"], "statuses": statuses}

    def put_vm(self, rid, rg, name):
        w = self.world
        body = self.body_json() or {}
        props = body.get("properties") or {}
        loc = body.get("location")
        if not loc:
            return self.reply(400, arm_error("LocationRequired", "The location property is required for this definition."))
        if loc != w.cfg["location"]:
            return self.reply(400, arm_error("LocationNotAvailableForResourceType", f"The provided location '{loc}' is not available for resource type 'Microsoft.Compute/virtualMachines'."))
        size = (props.get("hardwareProfile") or {}).get("vmSize")
        sizes = {s["name"]: s for s in w.cfg["vm_sizes"]}
        if size not in sizes:
            return self.reply(400, arm_error("InvalidParameter", f"The value {size} provided for the VM size is not valid. Target: 'vmSize'."))
        storage = props.get("storageProfile") or {}
        image = (storage.get("imageReference") or {}).get("id", "")
        if image.lower() not in {i.lower() for i in w.cfg["images"]}:
            return self.reply(404, arm_error("NotFound", f"The Image '{image}' cannot be found in '{loc}' region."))
        os_disk = storage.get("osDisk") or {}
        sat = ((os_disk.get("managedDisk") or {}).get("storageAccountType"))
        if sat is not None and sat not in CANONICAL_DISKS:
            return self.reply(400, arm_error("InvalidParameter", f"Storage account type '{sat}' is not valid. Target: 'storageAccountType'."))
        osp = props.get("osProfile") or {}
        if not osp.get("computerName") or not osp.get("adminUsername"):
            return self.reply(400, arm_error("InvalidParameter", "Required parameter 'osProfile.computerName'/'adminUsername' is missing."))
        keys = (((osp.get("linuxConfiguration") or {}).get("ssh") or {}).get("publicKeys")) or []
        if not keys and not osp.get("adminPassword"):
            return self.reply(400, arm_error("InvalidParameter", "Authentication using either SSH or by user name and password must be enabled in Linux profile."))
        if osp.get("customData") is not None:
            try:
                base64.b64decode(osp["customData"], validate=True)
            except Exception:
                return self.reply(400, arm_error("InvalidParameter", "customData must be base64."))
        nic_refs = ((props.get("networkProfile") or {}).get("networkInterfaces")) or []
        if not nic_refs:
            return self.reply(400, arm_error("InvalidParameter", "networkProfile.networkInterfaces is required."))
        priority = props.get("priority", "Regular")
        if priority in ("Spot", "Low") and props.get("evictionPolicy") not in ("Deallocate", "Delete"):
            return self.reply(400, arm_error("InvalidParameter", "evictionPolicy is required for Spot priority."))
        with w.lock:
            self.settle()
            existing = w.vms.get(rid.lower())
            if existing is not None:
                # PUT of an existing VM: an idempotent no-op here.
                return self.reply(200, self.vm_view(existing))
            for ref in nic_refs:
                nic = w.nics.get(ref.get("id", "").lower())
                if nic is None:
                    return self.reply(400, arm_error("InvalidResourceReference", f"Resource {ref.get('id')} referenced by resource {rid} was not found."))
                if nic["properties"].get("virtualMachine"):
                    return self.reply(400, arm_error("NicInUse", f"Network Interface {ref.get('id')} is used by existing resource {nic['properties']['virtualMachine']['id']}."))
            cores = sum(sizes[r[0]["properties"]["hardwareProfile"]["vmSize"]]["numberOfCores"] for r in w.vms.values())
            if cores + sizes[size]["numberOfCores"] > w.cfg["core_quota"]:
                return self.reply(
                    409,
                    arm_error(
                        "OperationNotAllowed",
                        f"Operation could not be completed as it results in exceeding approved Total Regional Cores quota. Location: {loc}, Current Limit: {w.cfg['core_quota']}, Current Usage: {cores}, Additional Required: {sizes[size]['numberOfCores']}.",
                    ),
                )
            fail, w.fail_next = w.fail_next, None
            disk_id = f"/subscriptions/{w.cfg['subscription']}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}_OsDisk_1_{uuid.uuid4().hex[:8]}"
            w.disks[disk_id.lower()] = {"id": disk_id, "vm": rid, "deleteOption": os_disk.get("deleteOption", "Detach")}
            res = {
                "id": rid,
                "name": name,
                "type": "Microsoft.Compute/virtualMachines",
                "location": loc,
                "tags": body.get("tags") or {},
                "properties": {
                    "vmId": str(uuid.uuid4()),
                    "provisioningState": "Creating",
                    "hardwareProfile": {"vmSize": size},
                    "storageProfile": {**storage, "osDisk": {**os_disk, "managedDisk": {**(os_disk.get("managedDisk") or {}), "id": disk_id}}},
                    "osProfile": {k: v for k, v in osp.items() if k not in ("adminPassword", "customData")},
                    "networkProfile": props.get("networkProfile"),
                    "priority": priority,
                    "evictionPolicy": props.get("evictionPolicy"),
                    "billingProfile": props.get("billingProfile"),
                    "timeCreated": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                },
            }
            meta = {"power": "starting", "customData": osp.get("customData")}
            w.vms[rid.lower()] = (res, meta)
            for ref in nic_refs:
                w.nics[ref["id"].lower()]["properties"]["virtualMachine"] = {"id": rid}

        def done():
            res["properties"]["provisioningState"] = "Failed" if fail else "Succeeded"
            meta["power"] = "stopped" if fail else "running"

        _, url = self.new_op(loc, w.args.vm_ready_secs, done, fail)
        return self.reply(201, self.vm_view((res, meta)), {"Azure-AsyncOperation": url})

    def get_vm(self, rid, rg, name):
        w = self.world
        with w.lock:
            self.settle()
            v = w.vms.get(rid.lower())
            out = None if v is None else self.vm_view(v, "instanceView" in self.path)
        if out is None:
            return self.reply(404, arm_error("ResourceNotFound", f"The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group '{rg}' was not found."))
        return self.reply(200, out)

    def remove_vm(self, rid):
        """The VM goes; its OS disk and NICs with it when their deleteOption says Delete (under the lock)."""
        w = self.world
        v = w.vms.pop(rid.lower(), None)
        if v is None:
            return
        res, _ = v
        for did, d in list(w.disks.items()):
            if d["vm"].lower() == rid.lower():
                if d["deleteOption"] == "Delete":
                    del w.disks[did]
                else:
                    d["vm"] = ""
        for ref in (res["properties"].get("networkProfile") or {}).get("networkInterfaces") or []:
            nic = w.nics.get(ref["id"].lower())
            if nic is None:
                continue
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                del w.nics[ref["id"].lower()]
            else:
                nic["properties"]["virtualMachine"] = None

    def delete_vm(self, rid, rg, name):
        w = self.world
        with w.lock:
            self.settle()
            v = w.vms.get(rid.lower())
            if v is None:
                return self.reply(204)
            res, meta = v
            res["properties"]["provisioningState"] = "Deleting"
            meta["power"] = "stopping"
        _, url = self.new_op(res["location"], w.args.delete_secs, lambda: self.remove_vm(rid))
        return self.reply(202, None, {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "1"})

    # ----- controls
    def control(self, method, parts):
        w = self.world
        if parts == ["state"]:
            with w.lock:
                self.settle()
                body = {
                    "vms": [self.vm_view(v, True) for v in w.vms.values()],
                    "custom_data": {v[0]["name"]: v[1]["customData"] for v in w.vms.values()},
                    "nics": list(w.nics.values()),
                    "disks": list(w.disks.values()),
                    "token_requests": w.token_requests,
                }
            return self.reply(200, body)
        if parts == ["requests"]:
            with w.lock:
                body = list(w.requests)
            return self.reply(200, body)
        if parts == ["throttle"] and method == "POST":
            b = self.body_json() or {}
            with w.lock:
                w.throttle = int(b.get("count", 1))
                w.retry_after = int(b.get("retry_after", 1))
            return self.reply(200, {})
        if parts == ["fail-next-vm"] and method == "POST":
            b = self.body_json() or {}
            with w.lock:
                w.fail_next = {"code": b.get("code", "AllocationFailed"), "message": b.get("message", "Allocation failed (fake).")}
            return self.reply(200, {})
        if parts == ["revoke-tokens"] and method == "POST":
            with w.lock:
                w.tokens.clear()
            return self.reply(200, {})
        if parts == ["plant"] and method == "POST":
            b = self.body_json() or {}
            sub, rg, name = w.cfg["subscription"], b["rg"], b["name"]
            vnet = w.cfg["virtual_networks"][0]
            subnet = f"/subscriptions/{sub}/resourceGroups/{vnet['resource_group']}/providers/Microsoft.Network/virtualNetworks/{vnet['name']}/subnets/{vnet['subnets'][0]['name']}"
            nic_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{name}-nic"
            vm_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            disk_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}_OsDisk"
            created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + float(b.get("created_offset_secs", 0))))
            with w.lock:
                ip = self.alloc_ip(subnet)
                w.nics[nic_id.lower()] = {
                    "id": nic_id, "name": f"{name}-nic", "type": "Microsoft.Network/networkInterfaces", "location": w.cfg["location"], "tags": b.get("tags", {}),
                    "properties": {"provisioningState": "Succeeded", "virtualMachine": {"id": vm_id},
                                   "ipConfigurations": [{"name": "ipconfig1", "properties": {"privateIPAddress": ip, "subnet": {"id": subnet}}}]},
                }
                w.disks[disk_id.lower()] = {"id": disk_id, "vm": vm_id, "deleteOption": "Delete"}
                res = {
                    "id": vm_id, "name": name, "type": "Microsoft.Compute/virtualMachines", "location": w.cfg["location"], "tags": b.get("tags", {}),
                    "properties": {"vmId": str(uuid.uuid4()), "provisioningState": "Succeeded", "hardwareProfile": {"vmSize": w.cfg["vm_sizes"][0]["name"]},
                                   "osProfile": {"computerName": "host-" + ip.replace(".", "-"), "adminUsername": "lsfuser"},
                                   "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}]},
                                   "priority": "Regular", "timeCreated": created},
                }
                w.vms[vm_id.lower()] = (res, {"power": "running", "customData": None})
            return self.reply(200, res)
        if len(parts) == 3 and parts[0] == "evict" and method == "POST":
            rg, name = parts[1], parts[2]
            rid = f"/subscriptions/{w.cfg['subscription']}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
            with w.lock:
                self.settle()
                v = w.vms.get(rid.lower())
                if v is None:
                    return self.reply(404, {})
                res, meta = v
                if res["properties"].get("priority") not in ("Spot", "Low"):
                    return self.reply(400, {"error": "not a Spot VM"})
                if res["properties"].get("evictionPolicy") == "Delete":
                    self.remove_vm(rid)
                else:
                    meta["power"] = "deallocated"
            return self.reply(200, {})
        return self.reply(404, {})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--world",
        default=str(Path(__file__).with_name("arm_world.json")),
        help="JSON: subscription, location, principal, resource_groups, virtual_networks, security_groups, images, vm_sizes, core_quota (default: arm_world.json beside this file, IBM's sample names)",
    )
    p.add_argument("--location", help="the world's region instead of its `location`")
    p.add_argument("--core-quota", type=int, help="the world's core quota instead of its `core_quota`")
    p.add_argument("--vm-ready-secs", type=float, default=1.0)
    p.add_argument("--delete-secs", type=float, default=1.0)
    args = p.parse_args()
    with open(args.world) as f:
        cfg = json.load(f)
    if args.location:
        cfg["location"] = args.location
    if args.core_quota is not None:
        cfg["core_quota"] = args.core_quota
    Handler.world = World(cfg, args)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
