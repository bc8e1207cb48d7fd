#!/usr/bin/python3
"""Runtime changes without disruption: `fio --verify=crc32c` writes and
verifies (verify_backlog while writing, and a full pass at the end) on two
ioband devices of one device group -- one client as root, one as uid 1000 --
while 100 changes are applied with iobandctl: weights, limits, policy
switches, type changes, attach/detach of the groups the clients are in
(so that their connections move between groups with requests queued and in
flight), io_limit/io_throttle, token, carryover, range-bw, reset. Every fio
run must end with no error: no request lost, failed or answered twice. At
the end nothing is left queued or in flight, and the daemon lives. With
one reactor thread and with two.

The same for issue 16's nodes: tenants made, joined, left and removed,
reservations and latency targets on a group, a device and a tenant set,
lowered and removed (the lead a reservation gave its groups goes with it),
a reserving group detached and its device leaving a reserving tenant, a
tenant's shared limit, the learned and the fixed window, while both clients
write and verify."""

import os
import random
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
IMAGE = 32 * MiB
CHANGES = 100

watchdog = it.pytest_watchdog()


class FioLoop:
    """Runs fio write+verify on one device again and again until stopped."""

    def __init__(self, d, name, uid=None):
        self.d = d
        self.name = name
        self.uid = uid
        self.runs = []  # (returncode, stdout, stderr)
        self.pid = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def argv(self):
        return ct.fio_argv(self.d.uri(self.name), f"verify-{self.name}", "--rw=randwrite", "--bsrange=4k-64k",
                           "--iodepth=16", f"--size={IMAGE}", "--verify=crc32c", "--verify_backlog=64",
                           "--do_verify=1", "--verify_fatal=1", "--verify_dump=0", "--verify_state_save=0",
                           "--randrepeat=0", uid=self.uid)

    def _loop(self):
        while not self.stop.is_set():
            p = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                                 preexec_fn=it._pdeathsig)
            self.pid = p.pid
            try:
                out, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                err += "\n(fio killed after 120 s: a request was never answered?)"
            self.runs.append((p.returncode, out, err))
            if p.returncode != 0:
                return

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=180)
        assert not self.thread.is_alive(), f"fio on {self.name} did not finish"

    def check(self):
        assert self.runs, f"fio on {self.name} never ran"
        for i, (rc, out, err) in enumerate(self.runs):
            assert rc == 0, f"fio run {i} on {self.name} exited {rc}:\n{err}\n{out[-3000:]}"
            job = ct.fio_json(out)["jobs"][0]
            assert job["error"] == 0, f"fio run {i} on {self.name}: error {job['error']}"
            assert job["write"]["io_bytes"] >= IMAGE - 64 * 1024, job["write"]["io_bytes"]
            # The final pass read back all that was written.
            assert job["read"]["io_bytes"] >= job["write"]["io_bytes"], (job["read"]["io_bytes"],
                                                                        job["write"]["io_bytes"])


def wait_for_writes(d, loops):
    """Until every loop's device has served writes."""
    deadline = time.monotonic() + it.TIMEOUT
    while True:
        st = d.status()
        if all(st[f.name]["groups"][-1]["write"] > 0 for f in loops):
            return
        assert time.monotonic() < deadline, "fio did not start"
        for f in loops:
            assert f.thread.is_alive(), f"fio on {f.name} ended at once: {f.runs[-1][2] if f.runs else ''}"
        time.sleep(0.05)


def stop_all(loops):
    """Stops every loop and waits for its fio."""
    for f in loops:
        f.stop.set()
    for f in loops:
        f.finish()


def check_all(loops):
    """Every fio run of every loop wrote, read back and verified all."""
    for f in loops:
        f.check()
    print("# fio runs: " + ", ".join(f"{f.name} {len(f.runs)}" for f in loops))


def assert_idle_and_serving(d, status):
    """Nothing queued or in flight, a client still served, no internal error."""
    d.assert_alive()
    for dev in status["devices"]:
        for g in dev["groups"]:
            assert g["queue_length"] == 0 and g["in_flight"] == 0, (dev["name"], g)
    with ct.Client(d.uri("rt1")) as c:
        c.do("write 1 4096 0")
        c.do("read 1 4096 0")
    log = d.logs()
    assert "internal error" not in log, log[-3000:]


PID = "PID"  # in a change: the pid of rt1's fio when the group is attached


def changes():
    """The 100 changes, as (device, words...) tuples, each valid when it comes."""
    out = []
    while len(out) < CHANGES:
        out += [
            ("rt1", "weight", random.choice([1, 50, 500])),
            ("rt2", "weight", random.choice([10, 300])),
            ("rt1", "token", random.choice([1, 256, 100000])),
            ("rt1", "io_limit", 4),
            ("rt2", "io_throttle", 2),
            ("rt1", "policy", "weight"),
            ("rt2", "type", "user"),
            ("rt2", "attach", ct.UID_A),             # user_fio's connection moves here
            ("rt2", "weight", f"{ct.UID_A}:20"),
            ("rt2", "limit", "iops-total=500"),
            ("rt1", "policy", "weight-iosize"),
            ("rt2", "limit", f"{ct.UID_A}:bps-total=8M,iops-write=400"),
            ("rt1", "type", "pid"),
            ("rt1", "attach", PID),                  # root_fio's connection moves here
            ("rt1", "weight", f"{PID}:400"),
            ("rt1", "carryover", random.choice([0, 4])),
            ("rt1", "policy", "range-bw"),
            ("rt1", "range-bw", f"{PID}:1000:20000"),
            ("rt2", "detach", ct.UID_A),             # ... and back to the default group
            ("rt2", "limit", "none"),
            ("rt1", "policy", "fair"),
            ("rt1", "detach", PID),
            ("rt1", "type", "none"),
            ("rt2", "type", "gid"),
            ("rt2", "attach", ct.UID_A),             # the same client, by its gid now
            ("rt2", "limit", "-1:iops-total=300"),
            ("rt2", "detach", ct.UID_A),
            ("rt2", "type", "none"),
            ("rt2", "limit", "-1:none"),
            ("rt1", "io_throttle", 1),
            ("rt1", "io_limit", random.choice([1, 16, 128])),
            ("rt2", "reset"),
            ("rt1", "token", 2048),
        ]
    return out[:CHANGES]


@pytest.mark.parametrize("threads", [1, 2])
def test_changes_under_verified_io(threads):
    random.seed(os.environ.get("IOBAND_TEST_SEED", "control-runtime"))
    # With two reactor threads, device group 1 lives on the second one and
    # every change travels there as a message.
    with ct.Daemon(args=["--threads", str(threads)]) as d:
        for name in ("rt1", "rt2"):
            d.create(name, it.sparse_file(d.path(f"{name}.img"), IMAGE), 1)
        root_fio = FioLoop(d, "rt1").start()
        user_fio = FioLoop(d, "rt2", uid=ct.UID_A).start()
        try:
            wait_for_writes(d, (root_fio, user_fio))
            applied = 0
            t0 = time.monotonic()
            i = 0
            pid = None
            for name, *words in changes():
                # The pid of the fio running when the group is attached; the
                # group's weight, range and detach name the same pid (that
                # fio run may have ended by then: the group stays).
                if words[0] == "attach" and words[1] == PID:
                    pid = root_fio.pid
                words = [str(w).replace(PID, str(pid)) for w in words]
                r = d.ctl("message", name, "0", *words)
                assert r.returncode == 0, f"change {i} ({name} {' '.join(map(str, words))}): {r.stderr.strip()}"
                applied += 1
                i += 1
                time.sleep(random.uniform(0.005, 0.04))
                for f in (root_fio, user_fio):
                    assert not (f.runs and f.runs[-1][0] != 0), f"fio on {f.name} failed: {f.runs[-1][2]}"
            elapsed = time.monotonic() - t0
            print(f"# {applied} changes in {elapsed:.1f}s; fio runs so far: rt1 {len(root_fio.runs)}, "
                  f"rt2 {len(user_fio.runs)}")
            assert applied == CHANGES
        finally:
            stop_all((root_fio, user_fio))
        check_all((root_fio, user_fio))
        assert_idle_and_serving(d, d.json_of("status"))
        table = d.json_of("table")["devices"]
        assert [t["type"] for t in table] == ["none", "none"], table


def node_changes():
    """Issue 16's changes, as ("message" | "tenant", words...) tuples, each
    valid when it comes; rt1 and rt3 join tenant acme, rt2's client (uid A)
    gets a group of its own."""
    out = []
    for _ in range(NODE_ROUNDS):
        out += [
            ("message", "rt1", "0", "model", f"rrandiops={random.choice([20000, 40000])}"),
            ("tenant", "create", "acme", "weight", random.choice([100, 300]), "limit", "iops-total=4000"),
            ("tenant", "attach", "acme", "rt1", "weight", 200),
            ("tenant", "attach", "acme", "rt3"),
            ("tenant", "set", "acme", "limit", "iops-total=4000,reservation-iops=3000"),
            ("message", "rt1", "0", "limit", "reservation-iops=1500"),
            ("message", "rt2", "0", "type", "user"),
            ("message", "rt2", "0", "attach", ct.UID_A),   # rt2's client moves to its own group
            ("message", "rt2", "0", "limit", f"{ct.UID_A}:reservation-iops=2000,latency-target=5ms"),
            ("message", "rt1", "0", "limit", "latency-target=3ms,latency-percentile=95"),
            ("tenant", "set", "acme", "weight", f"rt1:{random.choice([50, 1000])}"),
            ("message", "rt2", "0", "limit", "-1:reservation-bps=8M"),
            ("tenant", "set", "acme", "limit", "latency-target=4ms"),
            ("message", "rt1", "0", "limit", "reservation-iops=500"),  # lowered
            ("message", "rt1", "0", "io_limit", random.choice([4, 16])),
            ("tenant", "set", "acme", "limit", "reservation-iops=2500,bps-total=64M"),
            ("tenant", "detach", "acme", "rt1"),                       # leaves a reserving tenant
            ("message", "rt2", "0", "limit", f"{ct.UID_A}:reservation-iops=0"),  # removed, target kept
            ("message", "rt1", "0", "io_limit", "auto"),
            ("tenant", "attach", "acme", "rt1", "weight", 100),
            ("message", "rt2", "0", "detach", ct.UID_A),             # a group with a target goes
            ("message", "rt2", "0", "type", "none"),
            ("message", "rt2", "0", "limit", "-1:none"),
            ("tenant", "set", "acme", "limit", "none"),
            ("tenant", "remove", "acme"),                              # its devices back at the root
            ("message", "rt1", "0", "limit", "none"),
            ("message", "rt1", "0", "policy", "weight"),
            ("message", "rt1", "0", "policy", "fair"),
        ]
    return out


NODE_ROUNDS = 3  # each round ends with no tenant and no key left


@pytest.mark.parametrize("threads", [1, 2])
def test_node_changes_under_verified_io(threads):
    random.seed(os.environ.get("IOBAND_TEST_SEED", "control-runtime-nodes"))
    with ct.Daemon(args=["--threads", str(threads)]) as d:
        for name in ("rt1", "rt2", "rt3"):
            d.create(name, it.sparse_file(d.path(f"{name}.img"), IMAGE), 1)
        root_fio = FioLoop(d, "rt1").start()
        user_fio = FioLoop(d, "rt2", uid=ct.UID_A).start()
        try:
            wait_for_writes(d, (root_fio, user_fio))
            t0 = time.monotonic()
            for i, (verb, *words) in enumerate(node_changes()):
                words = [str(w) for w in words]
                r = d.ctl(verb, *words)
                assert r.returncode == 0, f"change {i} ({verb} {' '.join(words)}): {r.stderr.strip()}"
                time.sleep(random.uniform(0.005, 0.04))
                if i % 7 == 0:
                    d.json_of("status")  # the nodes' status while they change
                for f in (root_fio, user_fio):
                    assert not (f.runs and f.runs[-1][0] != 0), f"fio on {f.name} failed: {f.runs[-1][2]}"
            print(f"# {i + 1} changes in {time.monotonic() - t0:.1f}s")
        finally:
            stop_all((root_fio, user_fio))
        check_all((root_fio, user_fio))
        status = d.json_of("status")
        assert status.get("tenants", []) == [], status.get("tenants")
        for dev in status["devices"]:
            assert "reservation" not in dev and "latency_target" not in dev, dev["name"]
        assert_idle_and_serving(d, status)


if __name__ == "__main__":
    ct.require_root()
    it.require_tools("fio", "setpriv")
    sys.exit(it.run(__file__))
