"""A private etcd cluster and iobandd nodes joined to it, for the cluster
tenant test (test_cluster.py) and bench/cluster (docs/cluster.md).

  EtcdCluster   N etcd members on one address (loopback, or the bridge of
                a Network), ports found free at run time, each member
                stoppable and restartable (kill, restart)
  Network       one network namespace per node, each joined by a veth pair
                to a bridge of this run; etcd listens on the bridge's
                address; a node can be cut off (its veth down) and
                reconnected. Names and the subnet come from the pid;
                everything is removed at exit, on SIGTERM/SIGINT, and (for a
                run killed with SIGKILL) by the next run.
  network_for   a Network when root and `ip netns` works (unless
                IOBAND_CLUSTER_NET=loopback), else None: loopback mode
  Node          an iobandd (controltest.Daemon) with --etcd and --node,
                in its namespace when given one
  have_etcd     whether Debian's etcd-server is installed
"""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def have_etcd():
    return os.access(ETCD, os.X_OK)


def free_ports(count, host="127.0.0.1"):
    """Ports free now on `host` (the kernel's choice, so tests run side by side)."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind((host, 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _ip(*args, check=True):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Network:
    """A bridge `ibrPID` holding 10.X.Y.1/24 (X.Y from the pid), and per
    node a namespace `iobandPID-NAME` whose eth0 (10.X.Y.10+i) is one end of
    a veth pair; the other end, `ivPID-NAME`'s host side, is on the bridge."""

    PREFIX = "ioband"

    def __init__(self, names):
        self.pid = os.getpid()
        self.bridge = f"ibr{self.pid}"
        self.names = list(names)
        self.ns = {n: f"{self.PREFIX}{self.pid}-{n}" for n in self.names}
        self.veth = {n: f"iv{self.pid}{n}"[:15] for n in self.names}
        self.subnet = self._free_subnet()
        self.host = f"{self.subnet}.1"
        self.addr = {n: f"{self.subnet}.{10 + i}" for i, n in enumerate(self.names)}
        self.up = False

    def _free_subnet(self):
        used = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
        for k in range(256):
            x, y = ((self.pid >> 8) + k) % 256, self.pid % 256
            subnet = f"10.{x}.{y}"
            if f"{subnet}." not in used:
                return subnet
        raise RuntimeError("no free 10.x.y.0/24 for the test network")

    @classmethod
    def sweep(cls):
        """Removes what runs killed with SIGKILL left behind (their pid is gone)."""
        for line in _ip("netns", "list", check=False).stdout.splitlines():
            m = re.match(rf"({cls.PREFIX}(\d+)-\S+)", line)
            if m and not _alive(int(m.group(2))):
                _ip("netns", "del", m.group(1), check=False)
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            m = re.match(r"\d+: ((?:ibr|iv)(\d+)[^:@]*)", line)
            if m and not _alive(int(m.group(2))):
                _ip("link", "del", m.group(1), check=False)

    def start(self):
        self.sweep()
        self.up = True  # from here on, stop() removes what exists
        atexit.register(self.stop)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(sig, _exit_on_signal)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n in self.names:
            ns, veth = self.ns[n], self.veth[n]
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[n]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def cut(self, name):
        """The node loses the network: its veth's host side goes down."""
        _ip("link", "set", self.veth[name], "down")

    def mend(self, name):
        _ip("link", "set", self.veth[name], "up")

    def prefix(self, name):
        """What runs a command inside the node's namespace (`ip netns exec`
        execs it: the pid, signals and PR_SET_PDEATHSIG stay the program's)."""
        return ["ip", "netns", "exec", self.ns[name]]

    def stop(self):
        if not self.up:
            return
        self.up = False
        for n in self.names:
            _ip("netns", "del", self.ns[n], check=False)  # takes the veth pair with it
            _ip("link", "del", self.veth[n], check=False)
        _ip("link", "del", self.bridge, check=False)

    def describe(self):
        return (f"network namespaces {', '.join(self.ns.values())} on bridge {self.bridge} "
                f"({self.subnet}.0/24; etcd on {self.host})")


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def network_for(names):
    """A started Network for `names`, or None (loopback mode): not root, no
    `ip`, namespaces refused, or IOBAND_CLUSTER_NET=loopback."""
    if os.environ.get("IOBAND_CLUSTER_NET", "") == "loopback" or os.geteuid() != 0 or not shutil.which("ip"):
        return None
    net = Network(names)
    try:
        return net.start()
    except (RuntimeError, OSError) as e:
        net.stop()
        if os.environ.get("IOBAND_CLUSTER_NET", "") == "netns":
            raise
        sys.stderr.write(f"# network namespaces not available ({e}): loopback mode\n")
        return None


class EtcdCluster:
    def __init__(self, members=3, tmpdir=None, host="127.0.0.1"):
        self.dir = tmpdir or it.make_tmpdir("ioband-etcd.")
        self.host = host
        ports = free_ports(2 * members, host)
        self.names = [f"e{i}" for i in range(members)]
        self.client = {n: ports[2 * i] for i, n in enumerate(self.names)}
        self.peer = {n: ports[2 * i + 1] for i, n in enumerate(self.names)}
        self.procs = {}
        self.token = f"ioband-{os.getpid()}-{ports[0]}"

    def urls(self):
        return ",".join(f"http://{self.host}:{self.client[n]}" for n in self.names)

    def _argv(self, name, state):
        initial = ",".join(f"{n}=http://{self.host}:{self.peer[n]}" for n in self.names)
        return [ETCD, "--name", name, "--data-dir", os.path.join(self.dir, name),
                "--listen-client-urls", f"http://{self.host}:{self.client[name]}",
                "--advertise-client-urls", f"http://{self.host}:{self.client[name]}",
                "--listen-peer-urls", f"http://{self.host}:{self.peer[name]}",
                "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer[name]}",
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", state,
                # Quick elections on loopback; leases of 2 s stay above etcd's minimum.
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--log-level", "warn"]

    def start(self, name=None, state="new"):
        for n in [name] if name else self.names:
            log = open(os.path.join(self.dir, f"{n}.log"), "ab")
            # Dies with the test (a test killed by its time limit leaves no etcd behind).
            self.procs[n] = subprocess.Popen(self._argv(n, state), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, preexec_fn=it._pdeathsig)
        return self

    def wait_healthy(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.put("/ioband-test/ready", "1")
                return self
            except OSError:
                time.sleep(0.1)
        self.print_logs()
        raise RuntimeError("etcd cluster did not become ready")

    def kill(self, name, sig=signal.SIGKILL):
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def restart(self, name):
        self.start(name, state="existing")

    def stop(self):
        for n in list(self.procs):
            self.kill(n, signal.SIGTERM)

    def running(self):
        return [n for n, p in self.procs.items() if p.poll() is None]

    def _post(self, path, body):
        last = None
        for n in self.running() or self.names:
            try:
                req = urllib.request.Request(f"http://{self.host}:{self.client[n]}{path}", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    return json.loads(r.read())
            except OSError as e:
                last = e
        raise last

    def put(self, key, value):
        import base64
        return self._post("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                         "value": base64.b64encode(value.encode()).decode()})

    def print_logs(self):
        for n in self.names:
            path = os.path.join(self.dir, f"{n}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    sys.stderr.write(f"--- {path}\n{f.read()[-3000:]}\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Node(ct.Daemon):
    """iobandd --etcd URLS --node NAME with a private state directory and sockets."""

    def __init__(self, name, etcd_urls, args=(), network=None):
        self.node = name
        self.network = network
        super().__init__(args=["--etcd", etcd_urls, "--node", name] + list(args))

    def _spawn(self, argv, log_name):
        if self.network:
            argv = self.network.prefix(self.node) + list(argv)
        return super()._spawn(argv, log_name)

    def cluster(self, tenant):
        """The tenant's "cluster" object of status --json."""
        status = self.json_of("status")
        for t in status["tenants"]:
            if t["name"] == tenant:
                return t["cluster"]
        raise AssertionError(f"{self.node}: no tenant {tenant} in status")

    def status_cluster(self):
        return self.json_of("status").get("cluster")
