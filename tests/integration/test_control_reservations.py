#!/usr/bin/python3
"""Reservations and latency targets through iobandctl: set beside the limit
keys, a reservation past 90 % of the capacity refused with the capacity and
the sum in the message (exit 1, nothing saved), bad durations refused as
usage errors (exit 2), both shown in `status --json` while fio reads through
the group (served IOPS, the measured percentile), and kept across a restart
of iobandd."""

import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
IMAGE = 32 * MiB
ME = os.getuid()
OTHER = ME + 1 if ME + 1 != 0 else 2

watchdog = it.pytest_watchdog()


@pytest.fixture(scope="module")
def daemon():
    with ct.Daemon() as d:
        d.create("resv", ct.data_file(d.path("resv.img"), IMAGE), 1)
        d.message("resv", "type", "user")
        d.message("resv", "attach", ME)
        d.message("resv", "attach", OTHER)
        # A model of 10,000 reserved IOPS (4 KiB random reads a second).
        d.message("resv", "model", "rrandiops=10000")
        yield d


def group_of(data, gid):
    return {g["id"]: g for g in data["devices"][0]["groups"]}[gid]


def test_set_refuse_and_usage_errors(daemon):
    d = daemon
    d.message("resv", "limit", f"{ME}:reservation-iops=5000,latency-target=20ms,latency-percentile=95")
    saved = d.state_bytes()
    r = d.ctl("message", "resv", 0, "limit", f"{OTHER}:reservation-iops=4500")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "reservations would total 9500 IOPS" in r.stderr, r.stderr
    assert "capacity of 10000 IOPS" in r.stderr and "at most 9000" in r.stderr, r.stderr
    assert d.state_bytes() == saved, "a refused reservation changed the state file"
    assert group_of(d.json_of("table", "resv"), OTHER)["limits"] == {}
    refusal = r.stderr.strip()
    for bad, why in [("latency-target=2000", "duration with its unit"),
                     ("latency-percentile=100", "percentile from 50 to 99.9")]:
        r = d.ctl("message", "resv", 0, "limit", f"{OTHER}:{bad}")
        assert r.returncode == 2, (bad, r.returncode, r.stderr)
        assert why in r.stderr, (bad, r.stderr)
    r = d.ctl("message", "resv", 0, "limit", "latency-target=20s")
    assert r.returncode == 1 and "latency-target must be from 10us to 10s" in r.stderr, r.stderr
    assert d.state_bytes() == saved
    it.report("refused past 90 %: " + refusal)
    d.assert_alive()


def test_status_json_while_served_and_after_restart(daemon):
    d = daemon
    argv = ct.fio_argv(d.uri("resv"), "resv", "--rw=randread", "--bs=4k", "--iodepth=4", "--time_based",
                       "--runtime=2", f"--size={IMAGE}", "--randrepeat=0")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=2 + it.TIMEOUT)
    assert r.returncode == 0, f"fio exited {r.returncode}: {r.stderr}\n{r.stdout[-2000:]}"
    status = d.json_of("status", "resv")
    mine = group_of(status, ME)
    resv = mine["reservation"]
    assert resv["iops"] == 5000 and resv["effective_iops"] == 5000 and resv["scaled"] is False, resv
    assert resv["served_iops"] is not None and resv["served_iops"] > 0, resv
    target = mine["latency_target"]
    assert target["target_us"] == 20000 and target["percentile"] == 95.0, target
    assert target["measured_us"] is not None and target["epochs"] > 0, target
    summary = status["devices"][0]["reservations"]
    assert summary["reserved_iops"] == 5000, summary
    assert "reservation" not in group_of(status, OTHER)
    it.report(f"status --json: reservation {json.dumps(resv)}; latency {json.dumps(target)}; {json.dumps(summary)}")

    d.restart()
    table = d.json_of("table", "resv")
    assert group_of(table, ME)["limits"] == {"reservation-iops": 5000, "latency-target-us": 20000,
                                            "latency-percentile-permille": 950}
    again = group_of(d.json_of("status", "resv"), ME)
    assert again["reservation"]["iops"] == 5000, again
    assert again["latency_target"]["target_us"] == 20000, again
    d.message("resv", "limit", f"{ME}:none")
    assert "reservation" not in group_of(d.json_of("status", "resv"), ME)
    assert d.proc.poll() is None, "iobandd died after the restart"


if __name__ == "__main__":
    it.require_tools("fio")
    sys.exit(it.run(__file__))
