#!/usr/bin/python3
"""Limits sanity with a real client: `message NAME 0 limit iops-total=200`,
then a short `fio --ioengine=nbd` run delivers about 200 IOPS (150-260);
`limit none` gives the speed back. Also a group's bandwidth limit
(`limit -1:bps-total=4M`) holds at about 4 MiB/s, and `limit -1:none`
lifts it. Rates are taken from fio's report after a ramp (fio's
ramp_time), so the first burst does not count."""

import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
IMAGE = 64 * MiB

watchdog = it.pytest_watchdog()


@pytest.fixture(scope="module")
def daemon():
    with ct.Daemon() as d:
        d.create("lim", ct.data_file(d.path("lim.img"), IMAGE), 1)
        yield d


def fio_rate(d, bs="4k", runtime=3, ramp=1):
    """(IOPS, bytes/s) of a randread fio run on `lim` at iodepth 8."""
    argv = ct.fio_argv(d.uri("lim"), "lim", "--rw=randread", f"--bs={bs}", "--iodepth=8", "--time_based",
                       f"--runtime={runtime}", f"--ramp_time={ramp}", f"--size={IMAGE}", "--randrepeat=0")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + ramp + it.TIMEOUT)
    assert r.returncode == 0, f"fio exited {r.returncode}: {r.stderr}\n{r.stdout[-3000:]}"
    job = ct.fio_json(r.stdout)["jobs"][0]
    assert job["error"] == 0, job["error"]
    return job["read"]["iops"], job["read"]["bw_bytes"]


def test_device_iops_limit(daemon):
    d = daemon
    d.message("lim", "limit", "iops-total=200")
    dev = d.json_of("table", "lim")["devices"][0]
    assert dev["limits"] == {"iops-total": 200}, dev["limits"]
    limited, _ = fio_rate(d)
    d.message("lim", "limit", "none")
    assert d.json_of("table", "lim")["devices"][0]["limits"] == {}
    free, _ = fio_rate(d, runtime=1)
    it.report(f"limit iops-total=200: {limited:.0f} IOPS; after limit none: {free:.0f} IOPS")
    assert 150 <= limited <= 260, f"limit iops-total=200 gave {limited:.0f} IOPS"
    # Unlimited, even a slow machine does several times the limit.
    assert free >= 3 * 260, f"after limit none only {free:.0f} IOPS"
    # Counted in the device's default group.
    st = d.status()["lim"]["groups"][-1]
    assert st["read"] > 0 and st["delayed_read"] > 0, st
    d.assert_alive()


def test_group_bandwidth_limit(daemon):
    d = daemon
    d.message("lim", "limit", "-1:bps-total=4M")
    dev = d.json_of("table", "lim")["devices"][0]
    group = {g["id"]: g for g in dev["groups"]}[-1]
    assert group["limits"] == {"bps-total": 4 * MiB}, group
    _, limited = fio_rate(d, bs="64k")
    d.message("lim", "limit", "-1:none")
    dev = d.json_of("table", "lim")["devices"][0]
    assert {g["id"]: g for g in dev["groups"]}[-1]["limits"] == {}
    _, free = fio_rate(d, bs="64k", runtime=1)
    it.report(f"limit -1:bps-total=4M: {limited / MiB:.2f} MiB/s; after limit -1:none: {free / MiB:.1f} MiB/s")
    assert 3 * MiB <= limited <= 5.2 * MiB, f"limit -1:bps-total=4M gave {limited / MiB:.2f} MiB/s"
    assert free >= 3 * 5.2 * MiB, f"after limit -1:none only {free / MiB:.1f} MiB/s"
    d.assert_alive()


if __name__ == "__main__":
    it.require_tools("fio")
    sys.exit(it.run(__file__))
