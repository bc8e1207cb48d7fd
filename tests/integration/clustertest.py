"""A private etcd cluster and iobandd nodes joined to it, for the cluster
tenant test (test_cluster.py) and bench/cluster (docs/cluster.md).

  EtcdCluster   N etcd members on loopback, ports found free at run time,
                each member stoppable and restartable (kill, restart)
  Node          an iobandd (controltest.Daemon) with --etcd and --node
  have_etcd     whether Debian's etcd-server is installed
"""

import json
import os
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


def free_ports(count):
    """Ports free now on 127.0.0.1 (the kernel's choice, so tests run side by side)."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class EtcdCluster:
    def __init__(self, members=3, tmpdir=None):
        self.dir = tmpdir or it.make_tmpdir("ioband-etcd.")
        ports = free_ports(2 * members)
        self.names = [f"e{i}" for i in range(members)]
        self.client = {n: ports[2 * i] for i, n in enumerate(self.names)}
        self.peer = {n: ports[2 * i + 1] for i, n in enumerate(self.names)}
        self.procs = {}
        self.token = f"ioband-{os.getpid()}-{ports[0]}"

    def urls(self):
        return ",".join(f"http://127.0.0.1:{self.client[n]}" for n in self.names)

    def _argv(self, name, state):
        initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        return [ETCD, "--name", name, "--data-dir", os.path.join(self.dir, name),
                "--listen-client-urls", f"http://127.0.0.1:{self.client[name]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client[name]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", state,
                # Quick elections on loopback; leases of 2 s stay above etcd's minimum.
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--log-level", "warn"]

    def start(self, name=None, state="new"):
        for n in [name] if name else self.names:
            log = open(os.path.join(self.dir, f"{n}.log"), "ab")
            self.procs[n] = subprocess.Popen(self._argv(n, state), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
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
                req = urllib.request.Request(f"http://127.0.0.1:{self.client[n]}{path}", json.dumps(body).encode(),
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

    def __init__(self, name, etcd_urls, args=()):
        self.node = name
        super().__init__(args=["--etcd", etcd_urls, "--node", name] + list(args))

    def cluster(self, tenant):
        """The tenant's "cluster" object of status --json."""
        status = self.json_of("status")
        for t in status["tenants"]:
            if t["name"] == tenant:
                return t["cluster"]
        raise AssertionError(f"{self.node}: no tenant {tenant} in status")

    def status_cluster(self):
        return self.json_of("status").get("cluster")
