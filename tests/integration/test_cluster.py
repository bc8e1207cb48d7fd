#!/usr/bin/python3
"""Cluster tenants through etcd (docs/cluster.md): a 3-member etcd cluster on
loopback (ports found free at run time) and 3 iobandd nodes a, b, c on
private sockets, one tenant `web` limited to 600 IOPS cluster-wide:

- `tenant create web limit ... cluster on` on a, `tenant create web cluster
  on` on b and c join it (they take etcd's limit); status --json and
  /metrics show each node's share, demand, the cluster-wide rate and the
  etcd state; `tenant set` on c reaches
  a and b; bad cluster input is refused with one line and changes nothing;
- fio clients of depth 2, 4 and 10 on a, b and c: the shares follow the
  demand (2:4:10 within 0.06), they sum to 1, and the cluster-wide rate
  stays near the limit;
- `tenant capacity iops-total=300` (a capacity cluster tenants share by
  weight) set on b caps web on a: its part and enforced limit follow;
- one etcd member killed: the nodes stay connected, shares unchanged;
- node c killed with SIGKILL: within 2 x the lease (2 s) a and b share the
  whole limit (b's share about 4/6);
- every etcd member stopped: a keeps its share (fail static), takes half
  (equal split between a and b) after --etcd-fallback 2, and is live again
  once etcd is back, without a restart.

Skips (77) only when etcd is not installed (scripts/setup installs it).
"""

import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clustertest as cl  # noqa: E402
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

LIMIT = 600
LEASE = 2.0
FALLBACK = 2.0
DEPTHS = {"a": 2, "b": 4, "c": 10}


def wait_for(what, check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def fio(node, depth, seconds):
    argv = ct.fio_argv(node.uri("vm"), f"fio-{node.node}", "--rw=randread", "--bs=4k", f"--iodepth={depth}",
                       "--time_based", f"--runtime={seconds}", "--size=16M", "--thread")
    # --thread: the job is a thread of this process, so a kill ends it (a job
    # process would leave fio's process group and outlive it).
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(p):
    p.kill()
    p.wait()


def main():
    if not cl.have_etcd():
        it.skip("etcd is not installed (Debian's etcd-server; scripts/setup installs it)")
    etcd = cl.EtcdCluster(3)
    nodes = {}
    fios = []
    try:
        etcd.start().wait_healthy()
        for name in DEPTHS:
            args = ["--etcd-lease", str(LEASE), "--etcd-fallback", str(FALLBACK)]
            if name == "a":
                metrics_socket = os.path.join(it.make_tmpdir("ioband-cluster-http."), "http.sock")
                args += ["--http", "unix:" + metrics_socket]
            node = cl.Node(name, etcd.urls(), args=args).start()
            node.create("vm", it.sparse_file(node.path("vm.img"), 16 * it.MiB), 1)
            node.message("vm", "policy", "fair")
            nodes[name] = node
        a, b, c = nodes["a"], nodes["b"], nodes["c"]

        # Bad input: refused with one line, nothing changed.
        line = ct.one_line_error(a.ctl("tenant", "create", "web", "cluster", "maybe"), "cluster maybe")
        assert "cluster is on or off" in line, line
        plain = ct.Daemon().start()
        try:
            line = ct.one_line_error(plain.ctl("tenant", "create", "web", "cluster", "on"), "no --etcd")
            assert "--etcd" in line, line
            assert "web" not in plain.ok("tenant", "list")
        finally:
            plain.stop()

        created = a.json_of("tenant", "create", "web", "limit", f"iops-total={LIMIT}", "cluster", "on")
        assert created["tenant"]["cluster"]["node"] == "a", created
        for node in (b, c):
            joined = node.json_of("tenant", "create", "web", "cluster", "on")["tenant"]
            assert joined["limits"] == {"iops-total": LIMIT}, joined  # etcd's limit, not a default
        for node in nodes.values():
            node.ok("tenant", "attach", "web", "vm")
        # A change on any node reaches every node.
        c.ok("tenant", "set", "web", "limit", f"iops-total={LIMIT // 2}")
        wait_for("a to take c's limit", lambda: "iops-total=300 " in a.ok("tenant", "list", "web") + " ", 5)
        c.ok("tenant", "set", "web", "limit", f"iops-total={LIMIT}")
        wait_for("every node to see 3 nodes", lambda: all(n.cluster("web").get("nodes") == 3 for n in nodes.values()), 5)

        # Demand 2:4:10.
        fios = [fio(nodes[name], depth, 60) for name, depth in DEPTHS.items()]
        time.sleep(3)
        expected = {name: depth / sum(DEPTHS.values()) for name, depth in DEPTHS.items()}

        def shares_follow():
            view = a.cluster("web")
            shares = view["shares"]
            ok = set(shares) == set(DEPTHS) and all(abs(shares[n] - expected[n]) < 0.06 for n in DEPTHS)
            return view if ok else None
        view = wait_for("shares to follow demand 2:4:10", shares_follow, 5)
        print(f"# shares {view['shares']} demand {view['cluster_demand']:.1f} rate {view['cluster_rate']:.0f}",
              flush=True)
        assert abs(sum(view["shares"].values()) - 1) < 1e-6, view
        # The same on /metrics.
        metrics = subprocess.run(["curl", "-sf", "--unix-socket", metrics_socket, "http://localhost/metrics"],
                                 capture_output=True, text=True, timeout=10).stdout
        for name in ("ioband_cluster_tenant_share", "ioband_cluster_tenant_demand", "ioband_cluster_tenant_rate_iops"):
            assert f'{name}{{node="a",tenant="web"}}' in metrics, (name, metrics[-3000:])
        assert 'ioband_cluster_etcd_connected{node="a"} 1' in metrics, metrics[-3000:]
        # Every node applies its own share to its local limit.
        for name, node in nodes.items():
            mine = node.cluster("web")
            assert abs(mine["share"] - expected[name]) < 0.08, (name, mine)
            assert mine["enforced_limits"]["iops-total"] == round(LIMIT * mine["share"]), mine
        # The rate cluster-wide: near the limit, not over it by more than the
        # bound (a node's bucket burst; machine speed only makes it lower).
        rate = view["cluster_rate"]
        assert rate <= LIMIT * 1.15, view

        # A shared capacity below web's limit: web (the only tenant, active)
        # gets all of it, and each node enforces its share of that.
        line = ct.one_line_error(b.ctl("tenant", "capacity", "iops=5"), "capacity iops=5")
        assert "iops" in line, line
        b.ok("tenant", "capacity", f"iops-total={LIMIT // 2}")
        wait_for("a to read the capacity",
                 lambda: f'"iops-total":{LIMIT // 2}' in a.ok("tenant", "capacity").replace(" ", ""), 5)

        def capped():
            mine = a.cluster("web")
            return mine if mine["capacity_part"] == {"iops-total": LIMIT // 2} else None
        mine = wait_for("a to take the capacity", capped, 5)
        assert abs(mine["enforced_limits"]["iops-total"] - LIMIT // 2 * mine["share"]) <= 1, mine
        b.ok("tenant", "capacity", "none")
        wait_for("the capacity to go", lambda: a.cluster("web")["capacity_part"] is None, 5)

        # An etcd member lost: no effect.
        etcd.kill(etcd.names[0])
        time.sleep(1.5)
        for node in nodes.values():
            state = node.status_cluster()
            assert state["connected"] and state["mode"] == "live", state
            assert len(state["nodes"]) == 3, state

        # Node c dies: a and b take its share within 2 x the lease.
        killed = time.monotonic()
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait()

        def two_left():
            shares = a.cluster("web")["shares"]
            return shares if set(shares) == {"a", "b"} else None
        shares = wait_for("c's share to go to a and b", two_left, 2 * LEASE + 1)
        took = time.monotonic() - killed
        print(f"# c killed: shares {shares} after {took:.1f} s", flush=True)
        assert took <= 2 * LEASE + 0.5, took
        assert abs(shares["a"] + shares["b"] - 1) < 1e-6, shares
        wait_for("b's share to follow 2:4", lambda: abs(a.cluster("web")["shares"]["b"] - 4 / 6) < 0.08, 3)
        for p in fios[:2]:
            assert p.poll() is None, f"fio ended early: {p.stderr.read() if p.stderr else ''}"

        # etcd gone: the last shares hold (fail static), then an equal split
        # among the nodes last seen after the fallback; back without a restart.
        held = a.cluster("web")["share"]
        for name in etcd.names:
            etcd.kill(name)
        mine = wait_for("a to notice etcd is gone", lambda: (lambda m: m if m["mode"] == "fail-static" else None)(
            a.cluster("web")), 3)
        assert abs(mine["share"] - held) < 0.02 and mine["etcd"]["connected"] is False, (held, mine)
        # (The share is applied at the next tick after the mode changes.)
        mine = wait_for("the equal split", lambda: (lambda m: m if m["mode"] == "equal-split" and
                                                    abs(m["share"] - 0.5) < 1e-6 else None)(a.cluster("web")),
                        FALLBACK + 2)
        assert mine["enforced_limits"]["iops-total"] == LIMIT // 2, mine
        for name in etcd.names:
            etcd.restart(name)
        wait_for("a and b live again", lambda: all(n.status_cluster()["mode"] == "live" for n in (a, b)), 15)
        print(f"# etcd away: share held {held:.3f}, then 0.5, then live again", flush=True)
        for name in ("a", "b"):
            nodes[name].assert_alive()
        for p in fios:
            kill(p)
        # A node stops on SIGTERM at once (its agent leaves etcd, its control
        # thread's cluster ticks do not wait on stopped reactors).
        for name in ("a", "b"):
            nodes[name].proc.send_signal(signal.SIGTERM)
            assert nodes[name].proc.wait(timeout=10) == 0, name
        # Settings are applied when they change, not at every read.
        with open(a.path("iobandd.log")) as f:
            applied = f.read().count("settings from etcd applied")
        assert applied <= 3, f"a applied etcd's settings {applied} times"
        print("PASS")
        return 0
    except BaseException:
        etcd.print_logs()
        for node in nodes.values():
            node.print_logs()
        raise
    finally:
        for p in fios:
            kill(p)
        for node in nodes.values():
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        etcd.stop()


if __name__ == "__main__":
    sys.exit(main())
