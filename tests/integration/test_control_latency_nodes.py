#!/usr/bin/python3
"""Latency targets on a whole ioband device and on a tenant, through iobandctl
(qos/latency_target.h):

- `message NAME 0 limit latency-target=...` and `tenant set NAME limit
  latency-target=...,latency-percentile=...` are accepted, shown by `table`
  and `tenant list`, and kept across a restart (state.json);
- while a 4 KiB fio reader on the protected node misses its target (10 us,
  which no request over NBD meets), `status --json` shows the node's measured
  percentile against the target, a cap on the others, and the group of a deep
  fio writer on another device held to that cap (`in_flight_cap`), while the
  protected node's own groups are not capped;
- when the reader stops, the cap goes away within about a second;
- bad input (a percentile without a target, a target past 10 s, a duration
  without its unit) is refused with one line naming the problem, and
  state.json is left byte for byte as it was.
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
IMAGE = 32 * MiB

watchdog = it.pytest_watchdog()


@pytest.fixture(scope="module")
def daemon():
    with ct.Daemon() as d:
        # One device group: the protected devices and the writer's share the storage.
        for name in ("prot", "prot2", "bulk"):
            d.create(name, ct.data_file(d.path(name + ".img"), IMAGE), 1)
        yield d


def device_of(status, name):
    return {dev["name"]: dev for dev in status["devices"]}[name]


def tenant_of(status, name):
    return {t["name"]: t for t in status["tenants"]}[name]


def start_fio(d, name, *options):
    argv = ct.fio_argv(d.uri(name), name, *options, "--time_based", "--runtime=30", f"--size={IMAGE}",
                       "--randrepeat=0")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=it.TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(d, what, check, timeout=10.0):
    """Polls status --json until check(status) is true; returns that status."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = d.json_of("status")
        if check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s; last status {status}")


def contend(d, node_target, label):
    """A 2-deep 4 KiB reader on prot and a 32-deep 64 KiB writer on bulk;
    node_target(status) is the protected node's latency_target object."""
    writer = start_fio(d, "bulk", "--rw=randwrite", "--bs=64k", "--iodepth=32")
    reader = start_fio(d, "prot", "--rw=randread", "--bs=4k", "--iodepth=2")
    try:
        def capped(status):
            t = node_target(status)
            bulk = device_of(status, "bulk")["groups"][0]
            return (t is not None and t["measured_us"] is not None and t["cap_on_others"] is not None
                    and bulk.get("in_flight_cap", 0) > 0)

        status = wait_for(d, f"{label}: the writer capped", capped)
        target = node_target(status)
        assert target["met"] is False and target["measured_us"] > target["target_us"], target
        assert target["epochs"] > 0 and target["missed_epochs"] > 0, target
        prot = device_of(status, "prot")["groups"][0]
        assert "in_flight_cap" not in prot, f"{label}: the protected node's own group is capped: {prot}"
        it.report(f"{label}: target {target['target_us']} us p{target['percentile']}, measured "
                  f"{target['measured_us']} us, cap on the others {target['cap_on_others']}, writer's cap "
                  f"{device_of(status, 'bulk')['groups'][0]['in_flight_cap']}")
        assert reader.poll() is None and writer.poll() is None, "fio ended early"
    finally:
        stop(reader)
    try:
        # Nothing to protect: the cap doubles each idle epoch until it is gone.
        wait_for(d, f"{label}: the cap gone after the reader stopped",
                 lambda s: "in_flight_cap" not in device_of(s, "bulk")["groups"][0], timeout=5.0)
    finally:
        stop(writer)
    d.assert_alive()


def test_device_target_caps_the_other_devices(daemon):
    d = daemon
    d.message("prot", "limit", "latency-target=10us,latency-percentile=90")
    assert d.json_of("table", "prot")["devices"][0]["limits"] == {"latency-target-us": 10,
                                                                 "latency-percentile-permille": 900}
    contend(d, lambda s: device_of(s, "prot").get("latency_target"), "device")
    d.message("prot", "limit", "none")
    assert "latency_target" not in device_of(d.json_of("status"), "prot")


def test_tenant_target_caps_the_devices_outside_it(daemon):
    d = daemon
    d.ok("tenant", "create", "acme")
    d.ok("tenant", "attach", "acme", "prot")
    d.ok("tenant", "attach", "acme", "prot2")
    d.ok("tenant", "set", "acme", "limit", "latency-target=10us")
    listed = d.ok("tenant", "list", "acme")
    assert "latency-target-us=10" in listed, listed
    contend(d, lambda s: tenant_of(s, "acme").get("latency_target"), "tenant")


def test_bad_input_is_refused_and_changes_nothing(daemon):
    d = daemon
    if "acme" not in d.ok("tenant", "list"):
        d.ok("tenant", "create", "acme")
    d.ok("tenant", "set", "acme", "limit", "none")
    d.message("prot", "limit", "none")
    saved = d.state_bytes()
    for args, needle in [
        (["message", "prot", 0, "limit", "latency-percentile=99"], "latency-percentile needs latency-target"),
        (["message", "prot", 0, "limit", "latency-target=11s"], "latency-target must be from 10us to 10s"),
        (["message", "prot", 0, "limit", "latency-target=2"], "duration with its unit"),
        (["tenant", "set", "acme", "limit", "latency-target=2"], "duration with its unit"),
        (["tenant", "set", "acme", "limit", "latency-percentile=99.9"], "latency-percentile needs latency-target"),
        (["tenant", "set", "acme", "limit", "latency-target=5us"], "latency-target must be from 10us to 10s"),
    ]:
        line = ct.one_line_error(d.ctl(*args), " ".join(map(str, args)))
        assert needle in line, (args, line)
        assert d.state_bytes() == saved, f"{args} changed state.json"


def test_restart_keeps_the_targets(daemon):
    d = daemon
    d.message("prot2", "limit", "latency-target=3ms")
    if "acme" not in d.ok("tenant", "list"):
        d.ok("tenant", "create", "acme")
    d.ok("tenant", "set", "acme", "limit", "latency-target=2ms,latency-percentile=95")
    d.restart()
    assert d.json_of("table", "prot2")["devices"][0]["limits"] == {"latency-target-us": 3000}
    status = d.json_of("status")
    assert device_of(status, "prot2")["latency_target"]["target_us"] == 3000
    acme = tenant_of(status, "acme")
    assert acme["limits"] == {"latency-target-us": 2000, "latency-percentile-permille": 950}, acme
    assert acme["latency_target"]["percentile"] == 95.0, acme
    assert d.proc.poll() is None, "iobandd died after the restart"


if __name__ == "__main__":
    it.require_tools("fio")
    sys.exit(it.run(__file__))
