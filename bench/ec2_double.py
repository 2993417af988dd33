#!/usr/bin/env python3
"""A fast EC2 double for the scale bench: the few EC2 Query API actions the AWS guest uses
for on-demand templates, with instances indexed by id and by tag, so a DescribeInstances of
1,000 ids over 10,000 instances takes milliseconds (moto's takes ~100 s, which is why the
scale bench cannot run on moto).

It is not EC2 and not moto: it models RunInstances (pending, then running on the next
describe), DescribeInstances (filters `instance-id`, `tag:K`, `instance-state-name`;
MaxResults/NextToken paging), TerminateInstances (shutting-down, then terminated),
DescribeInstanceTypes (a fixed catalogue) and CreateTags. No capacity, no fleets, no spot,
no validation of images, subnets or security groups. It counts the requests it serves per
action: GET /_double/counts (POST /_double/reset zeroes them).

Usage: ec2_double.py PORT
"""

import itertools
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
TYPES = {"t3.micro": (2, 1, 1024), "t3.small": (2, 1, 2048), "m5.large": (2, 1, 8192), "m5.xlarge": (4, 2, 16384)}


class World:
    def __init__(self):
        self.lock = threading.Lock()
        self.instances = {}  # id -> dict
        self.order = []  # ids in launch order
        self.by_tag = {}  # (key, value) -> set of ids
        self.tokens = {}  # client token -> reservation (id, [ids])
        self.counts = {}
        self.seq = itertools.count(1)


W = World()


def ip_of(n):
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def instance_xml(i):
    tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in i["tags"])
    code = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}[i["state"]]
    return (
        f"<item><instanceId>{i['id']}</instanceId><imageId>{escape(i['image'])}</imageId>"
        f"<instanceState><code>{code}</code><name>{i['state']}</name></instanceState>"
        f"<privateDnsName>{i['dns']}</privateDnsName><instanceType>{escape(i['type'])}</instanceType>"
        f"<launchTime>{i['launch']}</launchTime><subnetId>{escape(i['subnet'])}</subnetId>"
        f"<privateIpAddress>{i['ip']}</privateIpAddress><tagSet>{tags}</tagSet></item>"
    )


def indexed(params, prefix):
    """Values of `prefix.1`, `prefix.2`, ... in order."""
    out = []
    for n in itertools.count(1):
        v = params.get(f"{prefix}.{n}")
        if v is None:
            return out
        out.append(v)


def filters(params):
    out = []
    for n in itertools.count(1):
        name = params.get(f"Filter.{n}.Name")
        if name is None:
            return out
        out.append((name, set(indexed(params, f"Filter.{n}.Value"))))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *a):
        pass

    def reply(self, status, body, content_type="text/xml;charset=UTF-8"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def ok(self, action, inner):
        self.reply(200, f'<?xml version="1.0" encoding="UTF-8"?><{action}Response xmlns="{NS}"><requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>')

    def error(self, code, message):
        self.reply(400, f"<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>")

    def do_GET(self):
        if self.path == "/_double/counts":
            with W.lock:
                return self.reply(200, json.dumps(W.counts), "application/json")
        self.error("InvalidAction", self.path)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode() if n else ""
        if self.path == "/_double/reset":
            with W.lock:
                W.counts = {}
            return self.reply(200, "{}", "application/json")
        params = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        action = params.get("Action", "")
        with W.lock:
            W.counts[action] = W.counts.get(action, 0) + 1
            handler = getattr(self, "act_" + action, None)
            if handler is None:
                return self.error("InvalidAction", f"the double does not model {action}")
            return handler(params)

    def act_RunInstances(self, p):
        token = p.get("ClientToken")
        if token and token in W.tokens:
            rid, ids = W.tokens[token]
            return self.ok("RunInstances", f"<reservationId>{rid}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet>{''.join(instance_xml(W.instances[i]) for i in ids)}</instancesSet>")
        count = int(p.get("MaxCount") or p.get("MinCount") or "1")
        tags = []
        for n in itertools.count(1):
            kind = p.get(f"TagSpecification.{n}.ResourceType")
            if kind is None:
                break
            if kind == "instance":
                for m in itertools.count(1):
                    k = p.get(f"TagSpecification.{n}.Tag.{m}.Key")
                    if k is None:
                        break
                    tags.append((k, p.get(f"TagSpecification.{n}.Tag.{m}.Value", "")))
        rid = f"r-{uuid.uuid4().hex[:17]}"
        launch = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        ids = []
        for _ in range(count):
            s = next(W.seq)
            iid = f"i-{s:017x}"
            ip = ip_of(s)
            W.instances[iid] = {
                "id": iid, "image": p.get("ImageId", ""), "type": p.get("InstanceType", "t3.micro"),
                "state": "pending", "ip": ip, "dns": f"ip-{ip.replace('.', '-')}.ec2.internal",
                "launch": launch, "subnet": p.get("SubnetId", ""), "tags": list(tags),
            }
            W.order.append(iid)
            for t in tags:
                W.by_tag.setdefault(t, set()).add(iid)
            ids.append(iid)
        if token:
            W.tokens[token] = (rid, ids)
        body = "".join(instance_xml(W.instances[i]) for i in ids)
        # Described from now on as running (as moto does): the next poll finds them up.
        for i in ids:
            W.instances[i]["state"] = "running"
        self.ok("RunInstances", f"<reservationId>{rid}</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet>{body}</instancesSet>")

    def act_DescribeInstances(self, p):
        ids = indexed(p, "InstanceId")
        candidates = None if not ids else set(ids)
        state_names = None
        for name, values in filters(p):
            if name == "instance-id":
                found = values
            elif name.startswith("tag:"):
                key = name[4:]
                found = set().union(*(W.by_tag.get((key, v), set()) for v in values)) if values else set()
            elif name == "instance-state-name":
                state_names = values
                continue
            else:
                return self.error("InvalidParameterValue", f"the double does not model filter {name}")
            candidates = found if candidates is None else candidates & found
        chosen = [i for i in (W.order if candidates is None else sorted(candidates, key=lambda x: int(x[2:], 16))) if i in W.instances]
        if state_names is not None:
            chosen = [i for i in chosen if W.instances[i]["state"] in state_names]
        start = int(p.get("NextToken") or 0)
        size = int(p.get("MaxResults") or 1000)
        page = chosen[start:start + size]
        nxt = f"<nextToken>{start + size}</nextToken>" if start + size < len(chosen) else ""
        items = "".join(instance_xml(W.instances[i]) for i in page)
        res = f"<item><reservationId>r-double</reservationId><ownerId>123456789012</ownerId><groupSet/><instancesSet>{items}</instancesSet></item>" if page else ""
        self.ok("DescribeInstances", f"<reservationSet>{res}</reservationSet>{nxt}")
        for i in page:
            if W.instances[i]["state"] == "shutting-down":
                W.instances[i]["state"] = "terminated"

    def act_TerminateInstances(self, p):
        out = []
        for iid in indexed(p, "InstanceId"):
            i = W.instances.get(iid)
            if i is None:
                return self.error("InvalidInstanceID.NotFound", f"The instance ID '{iid}' does not exist")
            prev = i["state"]
            if prev != "terminated":
                i["state"] = "shutting-down"
            out.append(f"<item><instanceId>{iid}</instanceId><currentState><code>32</code><name>{i['state']}</name></currentState><previousState><code>16</code><name>{prev}</name></previousState></item>")
        self.ok("TerminateInstances", f"<instancesSet>{''.join(out)}</instancesSet>")

    def act_DescribeInstanceTypes(self, p):
        items = []
        for name in indexed(p, "InstanceType"):
            if name in TYPES:
                v, c, m = TYPES[name]
                items.append(f"<item><instanceType>{name}</instanceType><vCpuInfo><defaultVCpus>{v}</defaultVCpus><defaultCores>{c}</defaultCores><defaultThreadsPerCore>{v // c}</defaultThreadsPerCore></vCpuInfo><memoryInfo><sizeInMiB>{m}</sizeInMiB></memoryInfo></item>")
        self.ok("DescribeInstanceTypes", f"<instanceTypeSet>{''.join(items)}</instanceTypeSet>")

    def act_CreateTags(self, p):
        for iid in indexed(p, "ResourceId"):
            i = W.instances.get(iid)
            if i is None:
                continue
            for n in itertools.count(1):
                k = p.get(f"Tag.{n}.Key")
                if k is None:
                    break
                t = (k, p.get(f"Tag.{n}.Value", ""))
                for old in [x for x in i["tags"] if x[0] == k]:
                    W.by_tag.get(old, set()).discard(iid)
                i["tags"] = [x for x in i["tags"] if x[0] != k] + [t]
                W.by_tag.setdefault(t, set()).add(iid)
        self.ok("CreateTags", "<return>true</return>")


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
