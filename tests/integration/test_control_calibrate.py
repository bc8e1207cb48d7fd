#!/usr/bin/python3
"""`iobandctl calibrate NAME` and `message NAME 0 model`, against a private
iobandd, on images in /dev/shm (memory: the figures are memory speed, and
no check here depends on how fast the machine is; --seconds 2 keeps it short).

- calibrate prints the model in one line (blk-iocost's io.cost.model keys)
  and how long it took; the model is applied (table --json, status --json:
  "calibrated": true), saved in state.json, restored after a restart.
- The image's content is unchanged (hash before and after), and nothing is
  left next to it (the scratch file is unnamed).
- An image with enough data is read itself; a small one on the scratch file.
- `message NAME 0 model KEY=VAL,...` sets keys by hand (the others keep their
  value; no longer "calibrated"); a bad key or value is refused with a
  message naming it, and the state is unchanged, byte for byte.
- One calibration at a time; its device cannot be removed meanwhile; bad
  --seconds and unknown devices are usage errors / refusals.
- A block device (a loop device, when we may make one): refused while a
  client is connected; new connections are refused while it is measured;
  its content is unchanged.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
SECONDS = 2
KEYS = ("rbps", "rseqiops", "rrandiops", "wbps", "wseqiops", "wrandiops", "depth")
LINE = re.compile(r"^" + " ".join(f"{k}=(\\d+)" for k in KEYS) + r"$")

watchdog = it.pytest_watchdog()


def shm_dir(prefix):
    """A private directory in /dev/shm (else /var/tmp), removed at exit."""
    for base in ("/dev/shm", "/var/tmp"):
        if os.path.isdir(base) and os.access(base, os.W_OK):
            path = tempfile.mkdtemp(prefix=prefix, dir=base)
            it._tmpdirs.append(path)
            return path
    it.skip("neither /dev/shm nor /var/tmp is writable")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def model_of_line(line):
    m = LINE.match(line)
    assert m, f"not a model line: {line!r}"
    return {k: int(v) for k, v in zip(KEYS, m.groups())}


def model_json(d, name, command="table"):
    return d.json_of(command, name)["devices"][0]["device_model"]


def calibrate(d, name, *args, seconds=SECONDS):
    return d.ctl("calibrate", "--seconds", seconds, *args, name, timeout=60 + it.TIMEOUT)


@pytest.fixture(scope="module")
def daemon():
    with ct.Daemon() as d:
        images = shm_dir("ioband-calibrate.")
        os.chmod(images, 0o755)
        d.images = images
        d.create("cal", ct.data_file(os.path.join(images, "cal.img"), 64 * MiB), 1)
        yield d


def test_calibrate_prints_applies_saves_and_restores(daemon):
    d = daemon
    image = os.path.join(d.images, "cal.img")
    before = sha256(image)
    listing = sorted(os.listdir(d.images))
    r = calibrate(d, "cal")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    model = model_of_line(lines[0])
    m = re.match(r"^cal: calibrated in (\d+\.\d) s, applied to device group 1$", lines[1])
    assert m, lines[1]
    took = float(m.group(1))
    assert 0 < took <= 60, took
    text = r.stdout
    assert "writes: a scratch file of" in text, text
    assert "reads: the scratch file" in text, text  # 64 MiB of data: too small to read on
    assert "memory file system" in text or not d.images.startswith("/dev/shm"), text
    it.report(f"calibrate --seconds {SECONDS} on {d.images}: {lines[0]} in {took} s")

    # Applied to the device group, shown by table and status.
    expected = dict(model, calibrated=True)
    assert model_json(d, "cal") == expected
    assert model_json(d, "cal", "status") == expected
    assert d.ok("message", "cal", 0, "model").strip() == lines[0]
    # Saved.
    with open(d.state_path) as f:
        assert json.load(f)["device_groups"][0]["device_model"] == expected
    # Nothing changed or left behind next to the image.
    assert sha256(image) == before
    assert sorted(os.listdir(d.images)) == listing
    # Restored after a restart.
    d.restart()
    assert model_json(d, "cal") == expected
    assert model_json(d, "cal", "status") == expected
    # The image is still served with its data.
    with open(image, "rb") as f:
        head = f.read(MiB)
    r = subprocess.run([ct.PY, "-c", "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1]); "
                        "sys.stdout.buffer.write(h.pread(1048576, 0))", d.uri("cal")],
                       capture_output=True, timeout=it.TIMEOUT)
    assert r.returncode == 0 and r.stdout == head, r.stderr
    assert d.proc.poll() is None


def test_calibrate_json_and_again_on_request(daemon):
    d = daemon
    r = calibrate(d, "cal", "--json")
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["ok"] is True
    data = reply["data"]
    assert data["name"] == "cal" and data["device_group_id"] == 1
    assert data["device_model"]["calibrated"] is True
    assert [f["name"] for f in data["figures"]] == ["rbps", "rseqiops", "rrandiops", "wbps", "wseqiops", "wrandiops"]
    assert all(f["value"] > 0 and f["samples"] for f in data["figures"]), data["figures"]
    assert [p["depth"] for p in data["sweep"]] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert 0 < data["seconds"] <= 60
    assert model_json(d, "cal") == data["device_model"]


def test_model_message_sets_shows_and_refuses(daemon):
    d = daemon
    before = model_json(d, "cal")
    # Set by hand: the keys given change, the others stay; no longer "calibrated".
    d.message("cal", "model", "rbps=300M,depth=12")
    now = model_json(d, "cal")
    assert now == dict(before, rbps=300 * MiB, depth=12, calibrated=False), now
    line = d.ok("message", "cal", 0, "model").strip()
    assert model_of_line(line) == {k: now[k] for k in KEYS}
    # The printed line is accepted back as it is (several words).
    d.ok("message", "cal", 0, "model", *line.split())
    assert model_json(d, "cal") == now

    state = d.state_bytes()
    table = d.json_of("table")
    for words, says in [
        (["colour=red"], 'unknown model key "colour"'),
        (["rbps=0"], "rbps must be between"),
        (["rrandiops=fast"], 'rrandiops must be a number of requests/s, not "fast"'),
        (["depth=5000"], "depth must be between 1 and 1024"),
        (["rbps=1M,rbps=2M"], "rbps is given twice"),
        (["rbps"], '"rbps" is not KEY=VAL'),
    ]:
        r = d.ctl("message", "cal", 0, "model", *words)
        line = ct.one_line_error(r, f"model {words}")
        assert r.returncode == 2, (words, r.returncode)
        assert says in line, (words, line)
        assert "usage: iobandctl message NAME 0 model" in line, line
        assert d.state_bytes() == state, words
        assert d.json_of("table") == table, words
    # Survives a restart as set.
    d.restart()
    assert model_json(d, "cal") == now
    # Back to the default: gone from the state file.
    d.message("cal", "model", "default")
    with open(d.state_path) as f:
        assert "device_model" not in json.load(f)["device_groups"][0]
    assert model_json(d, "cal")["calibrated"] is False


def test_an_image_with_enough_data_is_read_itself(daemon):
    d = daemon
    usage = shutil.disk_usage(d.images)
    if usage.free < 2 * 1024 * MiB:
        it.skip(f"{d.images} has {usage.free // MiB} MiB free")
    image = ct.data_file(os.path.join(d.images, "big.img"), 272 * MiB)
    before = sha256(image)
    d.create("big", image, 2)
    try:
        r = calibrate(d, "big")
        assert r.returncode == 0, r.stderr
        assert "reads: the image " + image in r.stdout, r.stdout
        assert model_json(d, "big")["calibrated"] is True
        # The other device group keeps its own model.
        assert model_json(d, "cal")["calibrated"] is False
        assert sha256(image) == before
    finally:
        d.ok("remove", "big")
        os.unlink(image)


def test_refusals(daemon):
    d = daemon
    for args, says in [
        (["calibrate", "--seconds", "0", "cal"], "--seconds must be from 1.0 to 60.0, not 0.0"),
        (["calibrate", "--seconds", "61", "cal"], "--seconds must be from 1.0 to 60.0, not 61.0"),
        (["calibrate", "--seconds", "soon", "cal"], '--seconds must be a number of seconds, not "soon"'),
        (["calibrate"], "calibrate needs NAME"),
        (["calibrate", "a", "b"], 'unexpected argument "b"'),
    ]:
        r = d.ctl(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert says in ct.one_line_error(r, str(args)), (args, r.stderr)
    r = d.ctl("calibrate", "nosuch")
    assert r.returncode == 1 and "no ioband device named nosuch" in ct.one_line_error(r, "nosuch")

    # One at a time; the device being measured stays.
    state = d.state_bytes()
    seen = log_count(d, "calibrate cal: measuring")
    first = subprocess.Popen([ct.IOBANDCTL, "--control", d.control, "calibrate", "--seconds", "4", "cal"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_log(d, "calibrate cal: measuring", seen)
        r = d.ctl("calibrate", "--seconds", 1, "cal")
        assert r.returncode == 1 and "iobandctl calibrate cal is under way" in ct.one_line_error(r, "second")
        r = d.ctl("remove", "cal")
        assert r.returncode == 1 and "is under way" in ct.one_line_error(r, "remove")
        # Meanwhile the control socket answers.
        assert "cal" in d.status()
        out, err = first.communicate(timeout=60 + it.TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert d.state_bytes() != state  # the new model was saved
    r = d.ctl("calibrate", "--help")
    assert r.returncode == 0 and "usage: iobandctl calibrate [--seconds N] NAME" in r.stdout
    assert "scratch file" in r.stdout and "Example" in r.stdout


def log_count(d, text):
    with open(d.procs[-1][1], errors="replace") as f:
        return f.read().count(text)


def wait_for_log(d, text, seen, timeout=it.TIMEOUT):
    """Until the daemon's log has `text` more often than `seen` times."""
    deadline = time.monotonic() + timeout
    while log_count(d, text) <= seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged again in {d.procs[-1][1]}")
        time.sleep(0.02)


# --- a block device ---------------------------------------------------------------

@pytest.fixture
def loop_device(daemon):
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        it.skip("a loop device needs root and losetup")
    backing = it.random_file(os.path.join(daemon.images, "loop.img"), 96 * MiB)
    r = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", backing], capture_output=True, text=True)
    if r.returncode != 0:
        r = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True)
    if r.returncode != 0:
        it.skip(f"no loop device: {r.stderr.strip()}")
    device = r.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device])
        os.unlink(backing)


def test_block_device_is_rewritten_in_place_only_without_clients(daemon, loop_device):
    d = daemon
    with open(loop_device, "rb") as f:
        size = f.seek(0, 2)
    before = sha256(loop_device)
    d.create("blk", loop_device, 3, sectors=size // ct.SECTOR)
    try:
        # A client connected: refused, and nothing held afterwards.
        with ct.Client(d.uri("blk")):
            r = calibrate(d, "blk")
            line = ct.one_line_error(r, "with a client")
            assert r.returncode == 1 and "rewriting data in place" in line and "blk (1) has a client" in line, line
        assert model_json(d, "blk")["calibrated"] is False

        seen = log_count(d, "calibrate blk: measuring")
        measuring = subprocess.Popen([ct.IOBANDCTL, "--control", d.control, "calibrate", "--seconds", "4", "blk"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_log(d, "calibrate blk: measuring", seen)
            # New connections wait until the end.
            r = subprocess.run([ct.PY, "-c", "import nbd,sys; h=nbd.NBD(); h.connect_uri(sys.argv[1])", d.uri("blk")],
                               capture_output=True, text=True, timeout=it.TIMEOUT)
            assert r.returncode != 0 and "policy" in r.stderr, r.stderr
            out, err = measuring.communicate(timeout=60 + it.TIMEOUT)
        finally:
            if measuring.poll() is None:
                measuring.kill()
        assert measuring.returncode == 0, err
        assert f"writes: block device {loop_device}, in place" in out, out
        assert model_json(d, "blk")["calibrated"] is True
        assert sha256(loop_device) == before
        with ct.Client(d.uri("blk")) as client:  # connections are taken again
            client.do("read 1 4096 0")
    finally:
        d.ok("remove", "--force", "blk")


if __name__ == "__main__":
    sys.exit(it.run(__file__))
