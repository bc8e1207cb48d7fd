#!/usr/bin/python3
"""`iobandctl remove` and connected clients.

- `remove NAME` is refused while a client is connected (one line, exit 1,
  the device and its export stay, the client keeps working); it succeeds
  once the client has gone.
- `remove --force NAME` ends the connections: an idle client's next request
  fails, a fio run with requests queued and in flight ends with an error,
  promptly, while fio write+verify on another device of the same device
  group goes on without an error; the export disappears (`nbdinfo --list`),
  a new connection to it is refused, the state file no longer has it,
  nothing is left queued or in flight.
"""

import json
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
SIZE = 32 * MiB

watchdog = it.pytest_watchdog()
nbd = it.require_nbd()


@pytest.fixture
def daemon():
    with ct.Daemon() as d:
        d.create("victim", it.sparse_file(d.path("victim.img"), SIZE), 1)
        d.create("bystander", it.sparse_file(d.path("bystander.img"), SIZE), 1)
        yield d


def exports(d):
    r = subprocess.run(["nbdinfo", "--list", "--json", d.uri("bystander")], capture_output=True, text=True,
                       timeout=it.TIMEOUT)
    assert r.returncode == 0, r.stderr
    return sorted(e["export-name"] for e in json.loads(r.stdout)["exports"])


def saved_devices(d):
    return sorted(dev["name"] for dev in json.loads(d.state_bytes())["devices"])


def assert_gone(d, name):
    assert name not in ct.parse_table(d.table())
    assert name not in exports(d)
    assert name not in saved_devices(d)
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(d.uri(name))
    # The other device is untouched and still served.
    assert "bystander" in exports(d)
    with ct.Client(d.uri("bystander")) as c:
        c.do("write 1 4096 0")
        c.do("read 1 4096 0")


def assert_ended(d, took):
    """remove --force ended the connections (the daemon gives up waiting for
    them after 30 s and says so)."""
    assert "still open" not in d.logs(), d.logs()[-2000:]
    assert took < 25, f"remove --force took {took:.1f}s"


def test_remove_refused_while_connected(daemon):
    d = daemon
    table = d.table()
    state = d.state_bytes()
    with ct.Client(d.uri("victim")) as c:
        c.do("write 2 4096 0")
        r = d.ctl("remove", "victim")
        line = ct.one_line_error(r, "remove with a client connected")
        assert r.returncode == 1
        assert "victim" in line and "connected" in line and "--force" in line, line
        assert d.table() == table
        assert d.state_bytes() == state
        assert "victim" in exports(d)
        c.do("read 2 4096 0")  # the client did not notice
        c.do("close")
        # The session ends asynchronously after the client's NBD_CMD_DISC.
        deadline = time.monotonic() + it.TIMEOUT
        while d.json_of("status", "victim")["devices"][0]["connections"] > 0:
            assert time.monotonic() < deadline, "the closed connection is still counted"
            time.sleep(0.05)
    d.ok("remove", "victim")
    assert_gone(d, "victim")


def test_remove_force_idle_client(daemon):
    d = daemon
    with ct.Client(d.uri("victim")) as c:
        c.do("write 1 4096 0")
        assert d.json_of("status", "victim")["devices"][0]["connections"] == 1
        t0 = time.monotonic()
        d.ok("remove", "--force", "victim")
        took = time.monotonic() - t0
        reply = c.call("read 1 4096 0")
        assert reply.startswith("error"), f"a read after remove --force: {reply}"
    assert_ended(d, took)
    assert_gone(d, "victim")
    d.assert_alive()


def test_remove_force_busy_client(daemon):
    """fio with requests queued (under a limit) and in flight on `victim`
    while fio write+verify runs on `bystander`, in the same device group:
    remove --force ends the first, the second finishes without an error."""
    d = daemon
    fio = subprocess.Popen(ct.fio_argv(d.uri("victim"), "busy", "--rw=randrw", "--bs=4k", "--iodepth=32",
                                       "--time_based", "--runtime=60", f"--size={SIZE}"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=it._pdeathsig)
    other = subprocess.Popen(ct.fio_argv(d.uri("bystander"), "other", "--rw=randwrite", "--bs=4k", "--iodepth=16",
                                         f"--size={SIZE}", "--verify=crc32c", "--verify_backlog=64",
                                         "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=it._pdeathsig)
    try:
        deadline = time.monotonic() + it.TIMEOUT
        while d.counters("victim")["write"] < 100 or d.counters("bystander")["write"] < 100:
            assert fio.poll() is None, f"fio ended: {fio.communicate()}"
            assert time.monotonic() < deadline, "fio did not start"
            time.sleep(0.05)
        # Slow the victim down so that its requests wait in ioband's queues too.
        d.message("victim", "limit", "iops-total=300")
        time.sleep(0.3)
        t0 = time.monotonic()
        d.ok("remove", "--force", "victim")
        took = time.monotonic() - t0
        out, err = fio.communicate(timeout=it.TIMEOUT)
        other_out, other_err = other.communicate(timeout=120)
    finally:
        for p in (fio, other):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert_ended(d, took)
    # fio's requests failed (ENOTCONN, or libnbd's handle is dead) and it said so.
    assert fio.returncode != 0, f"fio did not see the disconnection:\n{err}\n{out[-2000:]}"
    assert err.strip(), "fio failed without a word"
    # The other device's client did not notice.
    assert other.returncode == 0, f"fio on bystander exited {other.returncode}:\n{other_err}\n{other_out[-2000:]}"
    assert ct.fio_json(other_out)["jobs"][0]["error"] == 0
    assert_gone(d, "victim")
    for dev in d.json_of("status")["devices"]:
        for g in dev["groups"]:
            assert g["queue_length"] == 0 and g["in_flight"] == 0, (dev["name"], g)
    d.assert_alive()


def test_remove_unknown_and_recreate(daemon):
    d = daemon
    r = d.ctl("remove", "nosuch")
    ct.one_line_error(r, "remove nosuch")
    d.ok("remove", "--force", "victim")  # no client: as a plain remove
    assert_gone(d, "victim")
    # The name can be used again.
    d.create("victim", d.path("victim.img"), 1)
    assert "victim" in exports(d)


if __name__ == "__main__":
    it.require_tools("fio", "nbdinfo")
    sys.exit(it.run(__file__))
