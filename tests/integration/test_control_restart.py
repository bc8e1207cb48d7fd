#!/usr/bin/python3
"""Saved state across restarts.

- Every setting (devices, device groups, types, groups, weights, limits,
  range-bw, policy, token, carryover, io_throttle, io_limit) is restored:
  `table`, `table --json` and the settings in `status --json` are identical
  after a restart; the devices are served again with their data; a client
  is classified into its restored group.
- A corrupt or unusable state.json stops the start: exit non-zero, a message
  that names the file and the reason, and the file left byte for byte as it
  was; the daemon then starts again once the file is put right.
"""

import json
import os
import signal
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
SIZE = 16 * MiB

watchdog = it.pytest_watchdog()


def configure(d):
    """A configuration that uses every kind of setting."""
    a = it.sparse_file(d.path("a.img"), SIZE)
    b = it.sparse_file(d.path("b.img"), SIZE)
    c = it.sparse_file(d.path("c.img"), 2 * SIZE)
    d.create("alpha", a, 1, 8, 64)
    d.create("beta", b, 1)
    d.create("gamma", c, 7, sectors=SIZE // 512 + 8)  # fewer sectors than the file has
    d.message("alpha", "weight", 40)
    d.message("beta", "weight", 10)
    d.message("alpha", "type", "user")
    d.message("alpha", "attach", ct.UID_A)
    d.message("alpha", "attach", ct.UID_B)
    d.message("alpha", "weight", f"{ct.UID_A}:30")
    d.message("alpha", "weight", f"{ct.UID_B}:20")
    d.message("alpha", "limit", f"{ct.UID_A}:iops-total=1000,bps-write=10M")
    d.message("alpha", "limit", "iops-read=5000,iops-read-max=6000")
    d.message("alpha", "token", 256)
    d.message("alpha", "carryover", 5)
    d.message("alpha", "policy", "weight-iosize")
    d.message("gamma", "type", "pid")
    d.message("gamma", "attach", 4242)
    d.message("gamma", "policy", "range-bw")
    d.message("gamma", "range-bw", "4242:100:2000")
    d.message("gamma", "range-bw", "500:0")
    d.message("gamma", "io_limit", 32)
    d.message("gamma", "io_throttle", 16)


def snapshot(d):
    return {
        "table": d.table(),
        "table_json": d.json_of("table"),
        "status_settings": ct.settings_of_status(d.json_of("status")),
        "status_groups": {n: s["order"] for n, s in d.status().items()},
        "exports": sorted(e for e in list_exports(d) if e != "demo"),
    }


def list_exports(d):
    r = subprocess.run(["nbdinfo", "--list", "--json", d.uri("")], capture_output=True, text=True,
                       timeout=it.TIMEOUT)
    assert r.returncode == 0, r.stderr
    return [e["export-name"] for e in json.loads(r.stdout)["exports"]]


@pytest.fixture
def daemon():
    with ct.Daemon() as d:
        yield d


def test_restart_restores_everything(daemon):
    d = daemon
    configure(d)
    with ct.Client(d.uri("alpha"), uid=ct.UID_A) as c:
        c.do("write 4 4096 0")
    with ct.Client(d.uri("gamma")) as c:
        c.do(f"write 1 4096 {SIZE}")  # the device's last 8 sectors, past SIZE
    before = snapshot(d)
    assert before["exports"] == ["alpha", "beta", "gamma"]
    saved = d.state_bytes()

    d.restart()
    after = snapshot(d)
    for key in before:
        assert after[key] == before[key], f"{key} changed across the restart:\n{before[key]}\n{after[key]}"
    # Starting did not rewrite the state file.
    assert d.state_bytes() == saved
    # No demo export when there is a state file.
    assert "demo" not in list_exports(d)

    # The devices are served again, with their data, and a uid 1000 client
    # lands in the restored group 1000.
    with ct.Client(d.uri("alpha"), uid=ct.UID_A) as c:
        c.do("read 4 4096 0")
    st = d.status()
    assert st["alpha"]["groups"][ct.UID_A]["read"] == 4, st
    assert st["alpha"]["groups"][-1]["read"] == 0, st
    nbd = it.require_nbd()
    h = nbd.NBD()
    h.connect_uri(d.uri("alpha"))
    assert h.get_size() == SIZE
    assert h.pread(8192, 0) == bytes([1]) * 4096 + bytes([2]) * 4096
    h.shutdown()
    h = nbd.NBD()
    h.connect_uri(d.uri("gamma"))
    assert h.get_size() == SIZE + 8 * 512
    assert h.pread(4096, SIZE) == bytes([(SIZE // 4096) % 251 + 1]) * 4096
    h.shutdown()

    # A change after the restart is saved again, and restored the next time.
    d.message("beta", "weight", 77)
    d.restart()
    weights = {dev["name"]: {g["id"]: g["weight"] for g in dev["groups"]} for dev in d.json_of("table")["devices"]}
    assert weights["beta"] == {-1: 77}, weights
    d.ok("remove", "gamma")
    d.restart()
    assert sorted(ct.parse_table(d.table())) == ["alpha", "beta"]
    assert sorted(e for e in list_exports(d) if e != "demo") == ["alpha", "beta"]


def test_killed_during_changes(daemon):
    """SIGKILL while changes are being saved: the state file is the one
    before or after some change, never torn, and the daemon starts on it."""
    d = daemon
    d.create("alpha", it.sparse_file(d.path("a.img"), SIZE), 1)
    acknowledged = []

    def change():
        for weight in range(1, 100000):
            r = d.ctl("message", "alpha", "0", "weight", weight)
            if r.returncode != 0:
                return
            acknowledged.append(weight)

    t = threading.Thread(target=change)
    t.start()
    deadline = time.monotonic() + it.TIMEOUT
    while len(acknowledged) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    d.proc.send_signal(signal.SIGKILL)
    t.join(timeout=it.TIMEOUT)
    d.proc.wait(timeout=it.TIMEOUT)
    assert len(acknowledged) >= 20, acknowledged
    d.start()
    weight = {g["id"]: g["weight"] for g in d.json_of("table", "alpha")["devices"][0]["groups"]}[-1]
    # Every acknowledged change was saved (a change answers after its save);
    # the one in flight at the kill may or may not have been.
    assert weight in (acknowledged[-1], acknowledged[-1] + 1), (weight, acknowledged[-3:])
    with ct.Client(d.uri("alpha")) as c:
        c.do("read 1 4096 0")


def start_refused(d, *args):
    """Start iobandd on d's state; it must exit non-zero. Its stderr."""
    argv = [it.IOBANDD, "--state-dir", d.state_dir, "--socket", d.socket_path, "--control", d.control, *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=it.TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, f"iobandd started on a bad state file:\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def corruptions(good):
    """(what, bytes of a bad state file, words the message must contain)."""
    state = json.loads(good)
    out = [
        ("truncated", good[:len(good) // 2], []),
        ("empty", b"", []),
        ("binary garbage", bytes(range(256)), []),
        ("not an object", b"[1, 2, 3]\n", []),
    ]
    s = json.loads(good)
    s["devices"][0]["groups"][0]["weight"] = 0
    out.append(("weight 0", json.dumps(s).encode(), ["weight"]))
    s = json.loads(good)
    s["devices"][0]["sectors"] = "many"
    out.append(("sectors a string", json.dumps(s).encode(), ["sectors"]))
    s = json.loads(good)
    s["version"] = 999
    out.append(("unknown version", json.dumps(s).encode(), ["version"]))
    s = json.loads(good)
    s["devices"].append(dict(state["devices"][0]))
    out.append(("a device twice", json.dumps(s).encode(), [state["devices"][0]["name"]]))
    s = json.loads(good)
    del s["device_groups"]
    out.append(("device_groups missing", json.dumps(s).encode(), ["device_groups"]))
    return out


def test_corrupt_state_refused(daemon):
    d = daemon
    configure(d)
    d.stop()
    good = d.state_bytes()
    for what, bad, words in corruptions(good):
        with open(d.state_path, "wb") as f:
            f.write(bad)
        mtime = os.stat(d.state_path).st_mtime_ns
        message = start_refused(d)
        print(f"# {what}: {message.strip()}")
        assert d.state_path in message, f"{what}: the message does not name the file: {message!r}"
        for w in words:
            assert w in message, f"{what}: the message does not say {w!r}: {message!r}"
        assert len(message.strip()) > len(d.state_path) + 4, f"{what}: no reason given: {message!r}"
        assert d.state_bytes() == bad, f"{what}: the state file was changed"
        assert os.stat(d.state_path).st_mtime_ns == mtime, f"{what}: the state file was rewritten"
        assert not os.path.exists(d.control), f"{what}: a control socket was left behind"

    # A device whose backing file went away: refused with --strict, naming
    # the file (without, that device alone is skipped: test_daemon_exclusive).
    with open(d.state_path, "wb") as f:
        f.write(good)
    os.rename(d.path("b.img"), d.path("b.moved"))
    message = start_refused(d, "--strict")
    assert d.state_path in message and d.path("b.img") in message, message
    assert d.state_bytes() == good
    assert not os.path.exists(d.control) and not os.path.exists(d.socket_path), "a socket was left behind"
    os.rename(d.path("b.moved"), d.path("b.img"))

    # Put right, it starts and serves the saved configuration.
    d.start()
    assert sorted(ct.parse_table(d.table())) == ["alpha", "beta", "gamma"]
    assert d.state_bytes() == good


if __name__ == "__main__":
    ct.require_root()
    it.require_tools("nbdinfo", "setpriv")
    sys.exit(it.run(__file__))
