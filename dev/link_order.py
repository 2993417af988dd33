"""Writes host/link-order.txt: the functions the HostFactory calls run, for the linker to
lay out together (lld --symbol-ordering-file; see host/build.rs and DESIGN.md §8.27).

Run by dev/link-order.sh, which builds the binary and provides valgrind and moto. Drives the
five calls through the real scripts, each process under valgrind's callgrind tool, for the
built-in providers: the on-prem pool (an inventory file), AWS (IBM awsprov files against
moto's EC2 server; once on the default SQLite store and once on a throwaway PostgreSQL
server, when its binaries are there: HFWASM_PG_BINDIR) and Azure (IBM azureprov files
against the ARM fake of the tests). Every function callgrind saw run in the binary is
listed, those run by more calls first, then in their current address order.

usage: link_order.py HFWASM_BINARY OUTPUT
"""

import collections
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import boto3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port):
    moto = os.environ.get("HFWASM_MOTO_SERVER") or os.path.join(REPO, ".venv/bin/moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("link_order: moto_server did not start")


class Tree:
    """One provider instance: conf, work and log dirs, and a wrapper that runs the binary
    under callgrind, one output file per process."""

    def __init__(self, root, name, binary, profiles):
        self.name = name
        self.conf = os.path.join(root, name, "conf")
        self.work = os.path.join(root, name, "work")
        os.makedirs(self.conf)
        self.wrapper = os.path.join(root, name, "hfwasm-callgrind")
        with open(self.wrapper, "w") as f:
            f.write(
                "#!/bin/sh\nexec valgrind --tool=callgrind --demangle=no --compress-strings=no"
                f" --callgrind-out-file={profiles}/{name}.%p.out {binary} \"$@\" 2>/dev/null\n"
            )
        os.chmod(self.wrapper, stat.S_IRWXU)
        self.binary = binary
        self.n = 0

    def env(self):
        env = dict(os.environ)
        env.update(
            HF_PROVIDER_NAME=self.name,
            HF_PROVIDER_CONFDIR=self.conf,
            HF_PROVIDER_WORKDIR=self.work,
            HF_PROVIDER_LOGDIR=os.path.join(self.work, "log"),
            HFWASM_BIN=self.wrapper,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env

    def precompile(self):
        # Code compiled for the CPU valgrind reports (it hides some of the real one's
        # features), so the calls below load it from the cache and never compile.
        env = self.env()
        subprocess.run(["valgrind", "--tool=none", "-q", self.binary, "guest", "precompile"], env=env, check=True, stdout=subprocess.DEVNULL)

    def call(self, name, doc):
        self.n += 1
        path = os.path.join(self.work, f"in_{self.n}.json")
        os.makedirs(self.work, exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f)
        out = subprocess.run([os.path.join(REPO, "scripts", f"{name}.sh"), "-f", path], env=self.env(), capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"link_order: {self.name} {name} failed: {out.stdout} {out.stderr}")
        print(f"  {self.name}: {name}", file=sys.stderr)
        return json.loads(out.stdout)

    def cycle(self, template):
        """The HostFactory cycle: offer, provision 2, poll until final, list, return 1, poll."""
        self.call("getAvailableTemplates", {})
        rid = self.call("requestMachines", {"template": {"templateId": template, "machineCount": 2}})["requestId"]
        machines = []
        for _ in range(5):
            r = self.call("getRequestStatus", {"requests": [{"requestId": rid}]})["requests"][0]
            machines = r["machines"]
            if r["status"] != "running":
                break
        listed = [{"name": m["name"], "machineId": m["machineId"]} for m in machines]
        self.call("getReturnRequests", {"machines": listed})
        ret = self.call("requestReturnMachines", {"machines": listed[:1]})["requestId"]
        self.call("getRequestStatus", {"requests": [{"requestId": ret}]})
        self.call("getAvailableTemplates", {})


def onprem(tree):
    with open(os.path.join(tree.conf, "inventory.txt"), "w") as f:
        f.write("defaults ncpus=8 nram=32768\n")
        for i in range(1, 6):
            f.write(f"compute-{i:02} 192.168.1.{20 + i}\n")
    tree.precompile()
    tree.cycle("pool-8cpu-32768mb")


def aws(tree, endpoint):
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="hf", Description="hf", VpcId=vpc)["GroupId"]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    with open(os.path.join(tree.conf, "credentials"), "w") as f:
        f.write("[default]\naws_access_key_id=testing\naws_secret_access_key=testing\n")
    with open(os.path.join(tree.conf, f"{tree.name}prov_config.json"), "w") as f:
        json.dump({"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_CREDENTIAL_FILE": "credentials"}, f)
    with open(os.path.join(tree.conf, f"{tree.name}prov_templates.json"), "w") as f:
        t = {"templateId": "od", "maxNumber": 100, "imageId": ami, "subnetId": subnet, "vmType": "t3.micro", "securityGroupIds": [sg]}
        json.dump({"templates": [t]}, f)
    tree.precompile()
    tree.cycle("od")


def start_postgres(root):
    """A throwaway PostgreSQL server (trust on loopback), as `nobody` when root; returns
    (process, port) or None without server binaries."""
    bindir = os.environ.get("HFWASM_PG_BINDIR")
    if not bindir or not os.path.isfile(os.path.join(bindir, "initdb")):
        return None
    data = os.path.join(root, "pg")
    os.makedirs(data)
    as_user = []
    if os.getuid() == 0:
        os.chown(root, 65534, 65534)
        os.chown(data, 65534, 65534)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    subprocess.run(as_user + [os.path.join(bindir, "initdb"), "-D", data, "-U", "hfwasm", "--auth=trust"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen(
        as_user + [os.path.join(bindir, "postgres"), "-D", data, "-p", str(port), "-k", data, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.5)
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("link_order: PostgreSQL did not start")


def aws_on_postgres(tree, endpoint, port):
    """The AWS cycle with its state in PostgreSQL (the seed's production scenarios)."""
    aws_files = {"config_file": f"{tree.name}prov_config.json", "templates_file": f"{tree.name}prov_templates.json"}
    storage = {"strategy": "sql", "sql_strategy": {"type": "postgresql", "host": "127.0.0.1", "port": port, "name": "postgres", "user": "hfwasm"}}
    with open(os.path.join(tree.conf, "hfwasm.json"), "w") as f:
        json.dump({"aws": aws_files, "storage": storage}, f)
    aws(tree, endpoint)


def azure(tree, endpoint):
    with open(os.path.join(REPO, "tests/fakes/arm_world.json")) as f:
        world = json.load(f)
    e = endpoint.replace(":", "\\:") + "/"
    p = world["principal"]
    with open(os.path.join(tree.conf, "credentials"), "w") as f:
        f.write(f"subscription={world['subscription']}\nclient={p['client']}\nkey={p['secret']}\ntenant={p['tenant']}\nbaseURL={e}\nauthURL={e}\n")
    with open(os.path.join(tree.conf, "lsf.pub"), "w") as f:
        f.write("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHfwasmLinkOrder link-order\n")
    with open(os.path.join(REPO, "tests/data/ibm/azure/azureprov_config.json")) as f:
        cfg = json.load(f)
    cfg["AZURE_CREDENTIAL_FILE"] = "credentials"
    with open(os.path.join(tree.conf, "azureprov_config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(REPO, "tests/data/ibm/azure/azureprov_templates.json")) as f:
        t = json.load(f)
    for tpl in t["templates"]:
        tpl["sshPubKeyFile"] = "lsf.pub"
        tpl["maxNumber"] = 100
    with open(os.path.join(tree.conf, "azureprov_templates.json"), "w") as f:
        json.dump(t, f)
    tree.precompile()
    tree.cycle("Template-VM-0")


def functions(profile):
    """Function names callgrind saw run (own or called) in any object."""
    names = set()
    with open(profile, errors="replace") as f:
        for line in f:
            if line.startswith("fn=") or line.startswith("cfn="):
                names.add(line.split("=", 1)[1].strip())
    return names


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, output = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not shutil.which("valgrind"):
        sys.exit("link_order: valgrind not found (dev/link-order.sh installs it)")
    root = tempfile.mkdtemp(prefix="hfwasm-link-order-")
    profiles = os.path.join(root, "profiles")
    os.makedirs(profiles)
    port, arm_port = free_port(), free_port()
    moto = start_moto(port)
    fake = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests/fakes/arm_fake.py"), "--port", str(arm_port), "--vm-ready-secs", "0", "--delete-secs", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", arm_port)) == 0:
                break
        time.sleep(0.05)
    pg = None
    try:
        print("link_order: on-prem pool cycle under callgrind", file=sys.stderr)
        onprem(Tree(root, "onprem", binary, profiles))
        print("link_order: AWS cycle against moto under callgrind", file=sys.stderr)
        aws(Tree(root, "aws", binary, profiles), f"http://127.0.0.1:{port}")
        pg = start_postgres(root)
        if pg:
            print("link_order: AWS cycle on PostgreSQL under callgrind", file=sys.stderr)
            aws_on_postgres(Tree(root, "awspg", binary, profiles), f"http://127.0.0.1:{port}", pg[1])
        else:
            print("link_order: no PostgreSQL server binaries (HFWASM_PG_BINDIR); its calls are left out", file=sys.stderr)
        print("link_order: Azure cycle against the ARM fake under callgrind", file=sys.stderr)
        azure(Tree(root, "azure", binary, profiles), f"http://127.0.0.1:{arm_port}")
    finally:
        for p in (moto, fake):
            p.kill()
            p.wait()
        if pg:
            # SIGINT: PostgreSQL's fast shutdown (its backends go with it).
            pg[0].send_signal(signal.SIGINT)
            pg[0].wait(timeout=30)

    runs = collections.Counter()
    files = sorted(os.listdir(profiles))
    for name in files:
        runs.update(functions(os.path.join(profiles, name)))
    # Text symbols of the binary, in address order, with their sizes.
    nm = subprocess.run(["nm", "--defined-only", "-S", "-n", binary], capture_output=True, text=True, check=True).stdout
    order, size, seen = [], 0, set()
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW" and parts[3] in runs and parts[3] not in seen:
            seen.add(parts[3])
            order.append((-runs[parts[3]], len(order), parts[3]))
            size += int(parts[1], 16)
    order.sort()
    with open(output, "w") as f:
        f.writelines(name + "\n" for _, _, name in order)
    print(
        f"link_order: {len(order)} functions ({size / 1048576:.1f} MiB) run by {len(files)} calls -> {output}",
        file=sys.stderr,
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
