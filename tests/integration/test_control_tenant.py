#!/usr/bin/python3
"""Tenants through iobandctl (control/tenant.h, qos/tree.h):

- `tenant create/attach/set/list/detach/remove`, with `--json`: the tenant's
  weight, devices with their weights and the shared limit as given;
  `status --json` shows every tenant, device and group with its configured
  and effective share and the tenant's limit state; the dm-ioband verbs and
  their `table`/`status` lines are as without tenants;
- a restart keeps the tenants (state.json), and `status --json` after it
  shows the same configured shares;
- a tenant limit holds for two devices together: two fio clients on two
  devices of a tenant limited to iops-total=300 get about 300 IOPS in all,
  split 3:1 by the devices' weights in the tenant, and status says it is
  limiting, with effective shares of 0.75 and 0.25;
- bad input (unknown verbs, weights 0 or 10001, bad limit keys, a device of
  another device group, a device in two tenants, policy weight under a
  tenant, ...) is refused with one line naming the problem, and state.json
  is left byte for byte as it was.
"""

import os
import subprocess
import sys
import threading

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
        for name in ("vm1", "vm2", "vm3", "free"):
            d.create(name, ct.data_file(d.path(name + ".img"), IMAGE), 1)
        d.create("other", it.sparse_file(d.path("other.img"), IMAGE), 2)
        yield d


def assert_alive(d):
    """The daemon now (earlier ones were stopped by restarts)."""
    if d.proc.poll() is not None:
        d.print_logs()
        raise AssertionError(f"iobandd died with status {d.proc.returncode}")


def ensure_acme(d):
    """Tenant acme with vm1 and vm2 (as the first test leaves it), for a test run alone."""
    if "acme" not in d.ok("tenant", "list"):
        d.ok("tenant", "create", "acme", "weight", 300)
    listed = d.ok("tenant", "list", "acme")
    for name in ("vm1", "vm2"):
        if f"{name}:" not in listed:
            d.ok("tenant", "attach", "acme", name)


def tenant_json(d, *args):
    return d.json_of("tenant", *args)


def test_tenant_verbs_and_status(daemon):
    d = daemon
    table_before = d.table()
    out = d.ok("tenant", "create", "acme", "weight", 300, "limit", "iops-total=2000,iops-total-max=4000")
    assert out == "acme: weight 300 devices none limit iops-total=2000,iops-total-max=4000\n", out
    d.ok("tenant", "attach", "acme", "vm1", "weight", 200)
    d.ok("tenant", "attach", "acme", "vm2")
    d.ok("tenant", "attach", "acme", "vm3", "weight", 100)
    d.ok("tenant", "set", "acme", "weight", "vm2:50")
    assert d.ok("tenant", "list") == (
        "acme: weight 300 devices vm1:200,vm2:50,vm3:100 limit iops-total=2000,iops-total-max=4000\n")
    data = tenant_json(d, "list", "acme")
    assert data["tenants"] == [{
        "name": "acme", "weight": 300, "device_group_id": 1,
        "limits": {"iops-total": 2000, "iops-total-max": 4000},
        "devices": [{"name": "vm1", "weight": 200}, {"name": "vm2", "weight": 50}, {"name": "vm3", "weight": 100}],
    }], data
    # The dm-ioband verbs and lines are as before.
    assert d.table() == table_before
    d.message("vm1", "weight", 40)  # the default group of vm1, within vm1

    status = d.json_of("status")
    devices = {dev["name"]: dev for dev in status["devices"]}
    tenants = {t["name"]: t for t in status["tenants"]}
    acme = tenants["acme"]
    # Root of device group 1: acme (300) and the default group of `free` (100).
    assert acme["share"]["configured"] == pytest.approx(0.75)
    assert acme["share"]["active"] is False and acme["share"]["effective"] == 0
    assert acme["limiting"] is False and acme["limits"] == {"iops-total": 2000, "iops-total-max": 4000}
    shares = {dev["name"]: dev["share"] for dev in acme["devices"]}
    assert shares["vm1"]["configured"] == pytest.approx(200 / 350)
    assert shares["vm1"]["configured_path"] == pytest.approx(0.75 * 200 / 350)
    assert devices["vm1"]["tenant"] == "acme" and devices["free"]["tenant"] is None
    group = devices["vm1"]["groups"][0]
    assert group["id"] == -1 and group["share"]["configured"] == pytest.approx(1.0)
    assert group["share"]["configured_path"] == pytest.approx(0.75 * 200 / 350)
    assert devices["free"]["share"]["configured"] == pytest.approx(0.25)
    # Device group 2 has no tenant: its one group has all of it.
    assert devices["other"]["groups"][0]["share"]["configured_path"] == pytest.approx(1.0)

    d.ok("tenant", "detach", "acme", "vm3")
    assert [x["name"] for x in tenant_json(d, "list")["tenants"][0]["devices"]] == ["vm1", "vm2"]
    d.ok("tenant", "set", "acme", "limit", "none")
    assert tenant_json(d, "list")["tenants"][0]["limits"] == {}
    d.message("vm1", "weight", 100)
    assert_alive(d)


def test_restart_keeps_tenants(daemon):
    d = daemon
    d.ok("tenant", "create", "beta", "weight", 7, "limit", "bps-total=10M")
    d.ok("tenant", "attach", "beta", "vm3", "weight", 9)
    before = tenant_json(d, "list")
    status_before = {t["name"]: t["share"]["configured_path"] for t in d.json_of("status")["tenants"]}
    d.restart()
    assert tenant_json(d, "list") == before
    status_after = {t["name"]: t["share"]["configured_path"] for t in d.json_of("status")["tenants"]}
    assert status_after == status_before
    d.ok("tenant", "remove", "beta")
    assert "beta" not in d.ok("tenant", "list")
    d.restart()
    assert [t["name"] for t in tenant_json(d, "list")["tenants"]] == ["acme"]


def fio_iops(d, name, runtime, results):
    argv = ct.fio_argv(d.uri(name), name, "--rw=randread", "--bs=4k", "--iodepth=8", "--time_based",
                       f"--runtime={runtime}", "--ramp_time=1", f"--size={IMAGE}", "--randrepeat=0")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + 1 + it.TIMEOUT)
    assert r.returncode == 0, f"fio exited {r.returncode}: {r.stderr}\n{r.stdout[-3000:]}"
    results[name] = ct.fio_json(r.stdout)["jobs"][0]["read"]["iops"]


def test_tenant_limit_is_shared_and_split_by_weight(daemon):
    d = daemon
    ensure_acme(d)
    d.ok("tenant", "set", "acme", "weight", "vm1:300", "limit", "iops-total=300")
    d.ok("tenant", "set", "acme", "weight", "vm2:100")
    results = {}
    limiting = []
    threads = [threading.Thread(target=fio_iops, args=(d, name, 3, results)) for name in ("vm1", "vm2")]
    for t in threads:
        t.start()
    # While both run: the tenant's limit holds them back.
    threading.Event().wait(2.5)
    acme = {t["name"]: t for t in d.json_of("status")["tenants"]}["acme"]
    limiting.append(acme["limiting"])
    # Both devices busy: the effective shares are those of the weights, 3:1.
    effective = {dev["name"]: dev["share"]["effective"] for dev in acme["devices"]}
    for t in threads:
        t.join()
    total = results["vm1"] + results["vm2"]
    it.report(f"tenant limit iops-total=300 over vm1 (300) + vm2 (100): {results['vm1']:.0f} + "
              f"{results['vm2']:.0f} = {total:.0f} IOPS")
    assert 220 <= total <= 390, f"the shared limit of 300 gave {total:.0f} IOPS in all"
    assert 0.65 <= results["vm1"] / total <= 0.85, results
    assert limiting == [True]
    assert acme["share"]["active"] is True
    assert effective["vm1"] == pytest.approx(0.75) and effective["vm2"] == pytest.approx(0.25), effective
    d.ok("tenant", "set", "acme", "limit", "none")
    assert_alive(d)


BAD = [
    (["tenant"], "needs a VERB"),
    (["tenant", "frob", "acme"], "unknown verb"),
    (["tenant", "create"], "needs NAME"),
    (["tenant", "create", "acme"], "already exists"),
    (["tenant", "create", "t2", "weight", "0"], "weight \"0\""),
    (["tenant", "create", "t2", "weight", "10001"], "from 1 to 10000"),
    (["tenant", "create", "t2", "weight", "x"], "weight \"x\""),
    (["tenant", "create", "t2", "limit", "foo=1"], "foo"),
    (["tenant", "create", "t2", "limit", "iops-total-max=10"], "iops-total-max"),
    (["tenant", "create", "t2", "limit", "iops-total=abc"], "iops-total"),
    (["tenant", "create", "t2", "colour", "red"], "unknown setting"),
    (["tenant", "create", "-x"], "starts with '-'"),
    (["tenant", "attach", "nosuch", "vm1"], "no tenant named nosuch"),
    (["tenant", "attach", "acme", "nosuch"], "no ioband device named nosuch"),
    (["tenant", "attach", "acme", "vm1"], "already in tenant acme"),
    (["tenant", "attach", "acme", "other"], "device group 2"),
    (["tenant", "attach", "acme", "vm3", "limit", "iops-total=5"], "unknown setting"),
    (["tenant", "detach", "acme", "free"], "free is not in tenant acme"),
    (["tenant", "set", "acme"], "nothing to set"),
    (["tenant", "set", "acme", "weight", "free:5"], "free is not in tenant acme"),
    (["tenant", "set", "acme", "weight", "1", "weight", "2"], "given twice"),
    (["tenant", "remove", "nosuch"], "no tenant named nosuch"),
    (["tenant", "list", "nosuch"], "no tenant named nosuch"),
    (["message", "vm1", "0", "policy", "weight"], "tenant"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_refused_and_changes_nothing(daemon, args, needle):
    d = daemon
    ensure_acme(d)
    state = d.state_bytes()
    listed = d.ok("tenant", "list")
    r = d.ctl(*args)
    line = ct.one_line_error(r, " ".join(args))
    assert needle in line, line
    assert d.state_bytes() == state
    assert d.ok("tenant", "list") == listed
    assert_alive(d)


def test_help(daemon):
    d = daemon
    for args in (["tenant", "--help"], ["help", "tenant"]):
        text = daemon.ok(*args)
        assert "usage: iobandctl tenant VERB NAME" in text and "attach NAME DEVICE" in text, text
    assert "tenant" in d.ok("--help")


def test_reservations_on_a_tenant_and_a_device(daemon):
    """A tenant and a whole device reserve (docs/reservations.md): the tenant's
    reservation covers its device's, status --json shows both beside the device
    group's sum, a sum past 90 % of the capacity is refused naming both and
    changing nothing, and a restart keeps them."""
    d = daemon
    ensure_acme(d)
    d.message("vm1", "model", "rrandiops=10000")
    d.ok("tenant", "set", "acme", "limit", "reservation-iops=2000")
    d.message("vm1", "limit", "reservation-iops=1000")
    state = d.state_bytes()
    for args in (["tenant", "set", "acme", "limit", "reservation-iops=10000000"],
                 ["message", "vm2", "0", "limit", "reservation-iops=10000000"]):
        r = d.ctl(*args)
        line = ct.one_line_error(r, " ".join(args))
        assert "reservations would total" in line and "capacity of" in line and "nothing was changed" in line, line
        assert d.state_bytes() == state
    line = ct.one_line_error(d.ctl("tenant", "set", "acme", "limit", "latency-target=2"), "tenant latency target")
    assert "duration with its unit" in line, line
    assert d.state_bytes() == state
    # A real client on vm1 is served under both.
    argv = ct.fio_argv(d.uri("vm1"), "vm1", "--rw=randread", "--bs=4k", "--iodepth=4", "--time_based",
                       "--runtime=2", f"--size={IMAGE}", "--randrepeat=0")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=2 + it.TIMEOUT)
    assert r.returncode == 0, r.stderr

    def check(status):
        acme = {t["name"]: t for t in status["tenants"]}["acme"]
        vm1 = {dev["name"]: dev for dev in status["devices"]}["vm1"]
        assert acme["reservation"]["iops"] == 2000 and acme["reservation"]["wanted_iops"] == 2000, acme
        assert vm1["reservation"]["iops"] == 1000, vm1
        # The tenant's 2000 cover its device's 1000: 2000 are reserved in all.
        assert vm1["reservations"]["reserved_iops"] == 2000, vm1["reservations"]
        return acme, vm1

    acme, vm1 = check(d.json_of("status"))
    it.report(f"tenant reservation 2000 IOPS: served {acme['reservation']['served_iops']} in the last second, "
              f"met {acme['reservation']['met']}; vm1's 1000: served {vm1['reservation']['served_iops']}")
    assert acme["reservation"]["served_iops"] is not None and acme["reservation"]["served_iops"] > 0
    d.restart()
    check(d.json_of("status"))
    assert "reservation-iops=2000" in d.ok("tenant", "list", "acme")
    d.ok("tenant", "set", "acme", "limit", "none")
    d.message("vm1", "limit", "none")
    assert "reservations" not in {dev["name"]: dev for dev in d.json_of("status")["devices"]}["vm1"]
    assert_alive(d)


def test_removing_a_device_takes_it_out_of_its_tenant(daemon):
    d = daemon
    ensure_acme(d)
    d.ok("tenant", "attach", "acme", "vm3")
    d.ok("remove", "vm3")
    assert [x["name"] for x in tenant_json(d, "list", "acme")["tenants"][0]["devices"]] == ["vm1", "vm2"]
    d.ok("tenant", "remove", "acme")
    assert d.ok("tenant", "list") == "No tenants found\n"
    # The devices are back under the root: policy weight is allowed again.
    d.message("vm1", "policy", "weight")
    d.message("vm1", "policy", "fair")
    d.restart()
    assert d.ok("tenant", "list") == "No tenants found\n"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
