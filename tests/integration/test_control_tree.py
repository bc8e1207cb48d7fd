#!/usr/bin/python3
"""Three levels end to end with real clients (docs/hierarchy.md): tenant ->
ioband device -> uid group.

Tenant `tree` holds devices t1 (weight 300 in it) and t2 (100); t1 is a
`type user` device whose groups 1000 and 2000 weigh 80 and 20. Three
`fio --ioengine=nbd` clients, 32 deep each: as uid 1000 and as uid 2000 on
t1, as root on t2. The tenant's shared limit (iops-total=3000) makes it the
bottleneck whatever the disk and the CPU, so the split is the scheduler's:
each leaf's share is the product of the hweights on its path,

    uid 1000: 300/400 * 80/100 = 60 %
    uid 2000: 300/400 * 20/100 = 15 %
    t2:       100/400          = 25 %

within 5 points (measured from the status counters over a window in which
all three run); status --json shows the same configured and effective
shares at the three levels. Then uid 2000's client stops: its share goes to
its sibling first (uid 1000 gets 75 %, t2 keeps 25 %).
"""

import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
IMAGE = 64 * MiB
RUNTIME = 120     # seconds each fio may run: the test stops them after its windows (a slow start under load must not end one inside a window)
WINDOW = 3.0      # seconds of the measured window
TOLERANCE = 5.0   # percentage points
LIMIT = 3000

watchdog = it.pytest_watchdog()


@pytest.fixture(scope="module")
def tree():
    ct.require_root()
    with ct.Daemon(socket_mode="0666") as d:
        for name in ("t1", "t2"):
            d.create(name, ct.data_file(d.path(f"{name}.img"), IMAGE), 1)
        d.message("t1", "type", "user")
        for uid, weight in ((ct.UID_A, 80), (ct.UID_B, 20)):
            d.message("t1", "attach", uid)
            d.message("t1", "weight", f"{uid}:{weight}")
        d.ok("tenant", "create", "tree", "limit", f"iops-total={LIMIT}")
        d.ok("tenant", "attach", "tree", "t1", "weight", 300)
        d.ok("tenant", "attach", "tree", "t2", "weight", 100)
        yield d


LEAVES = {"uid1000": ("t1", ct.UID_A), "uid2000": ("t1", ct.UID_B), "t2": ("t2", -1)}


def reads(d):
    status = d.status()
    return {leaf: status[device]["groups"][group]["read"] for leaf, (device, group) in LEAVES.items()}


def start(d, leaf):
    device, group = LEAVES[leaf]
    uid = group if group != -1 else None
    argv = ct.fio_argv(d.uri(device), leaf, "--rw=randread", "--bs=4k", "--iodepth=32", "--time_based",
                       f"--runtime={RUNTIME}", f"--size={IMAGE}", "--norandommap", "--randrepeat=0", uid=uid)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                            preexec_fn=it._pdeathsig)


def window(d, leaves, seconds):
    """Each leaf's share (%) of the reads over `seconds`, and the status --json at its end."""
    before = reads(d)
    time.sleep(seconds)
    after = reads(d)
    status = d.json_of("status")
    delta = {leaf: after[leaf] - before[leaf] for leaf in leaves}
    total = sum(delta.values())
    assert total > 0, (before, after)
    return {leaf: 100.0 * n / total for leaf, n in delta.items()}, total / seconds, status


def stop(procs):
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        try:
            p.communicate(timeout=it.TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_three_levels_split_by_hweights(tree):
    d = tree
    procs = {leaf: start(d, leaf) for leaf in LEAVES}
    try:
        deadline = time.monotonic() + it.TIMEOUT
        while any(n == 0 for n in reads(d).values()):
            assert time.monotonic() < deadline, "the fio clients did not all start"
            assert all(p.poll() is None for p in procs.values()), "a fio client ended early"
            time.sleep(0.1)
        time.sleep(1.0)
        shares, iops, status = window(d, LEAVES, WINDOW)
        assert all(p.poll() is None for p in procs.values()), "a fio client ended inside the window"
        # uid 2000 stops: its share goes to its sibling in t1 first.
        procs["uid2000"].terminate()
        procs["uid2000"].communicate(timeout=it.TIMEOUT)
        time.sleep(0.5)
        after_stop, iops_after, _ = window(d, ("uid1000", "t2"), 2.0)
    finally:
        stop(procs)
    it.report(f"tenant (limit {LIMIT}) -> t1 (300) {{uid 1000 (80), uid 2000 (20)}}, t2 (100): "
              f"{shares['uid1000']:.1f} / {shares['uid2000']:.1f} / {shares['t2']:.1f} % (want 60 / 15 / 25) "
              f"at {iops:.0f} IOPS; uid 2000 stopped: {after_stop['uid1000']:.1f} / {after_stop['t2']:.1f} % "
              f"(want 75 / 25) at {iops_after:.0f} IOPS; load {os.getloadavg()[0]:.1f}")
    want = {"uid1000": 60.0, "uid2000": 15.0, "t2": 25.0}
    for leaf, expected in want.items():
        assert abs(shares[leaf] - expected) <= TOLERANCE, (leaf, shares)
    assert abs(after_stop["uid1000"] - 75.0) <= TOLERANCE and abs(after_stop["t2"] - 25.0) <= TOLERANCE, after_stop

    # status --json: the configured shares at each level and along the path.
    devices = {dev["name"]: dev for dev in status["devices"]}
    tenant = {t["name"]: t for t in status["tenants"]}["tree"]
    assert tenant["share"]["configured"] == pytest.approx(1.0) and tenant["limiting"] is True, tenant
    assert devices["t1"]["share"]["configured"] == pytest.approx(0.75)
    # The tenant's limit held its devices back; no group has a limit of its own.
    assert devices["t1"]["limiting"] is True and devices["t1"]["groups"][0]["limiting"] is False
    assert devices["t2"]["share"]["effective_path"] == pytest.approx(0.25)
    groups = {g["id"]: g["share"] for g in devices["t1"]["groups"]}
    assert groups[ct.UID_A]["configured"] == pytest.approx(80 / 200)  # beside uid 2000 (20) and the default (100)
    assert groups[ct.UID_A]["effective"] == pytest.approx(0.8)         # the default group is idle
    assert groups[ct.UID_A]["effective_path"] == pytest.approx(0.6)
    assert groups[ct.UID_B]["effective_path"] == pytest.approx(0.15)
    d.assert_alive()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
