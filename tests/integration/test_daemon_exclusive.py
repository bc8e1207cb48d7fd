#!/usr/bin/python3
"""One daemon per state directory and per image; a start and a stop that
leave nothing behind.

- A second iobandd on the same --state-dir (other socket names) refuses to
  start, naming the first one's pid; the first one's state is untouched.
- An image served read-write by one daemon is refused by another (--export
  or `iobandctl create`), naming the holder's pid; read-only exports share
  it. qemu-nbd refuses an image iobandd writes, and iobandd refuses one
  qemu-nbd writes (QEMU's own lock bytes). --no-image-locks turns it off.
- The sockets are removed after a failed start and after SIGTERM with a
  client that never reads its replies (the stop is bounded).
- A state.json device whose image is missing is logged and skipped, the
  rest (command-line exports too) starts, and the entry stays in state.json
  until removed; with --strict the start stops.
- A FIFO given as --export is refused at once.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
watchdog = it.pytest_watchdog()


def iobandd(tmpdir, *args, timeout=it.TIMEOUT):
    """iobandd expected to fail at start: (exit status, output)."""
    argv = [it.IOBANDD, "--state-dir", os.path.join(tmpdir, "state"), "--socket", os.path.join(tmpdir, "nbd.sock"),
            "--control", os.path.join(tmpdir, "ctl.sock")] + list(args)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


def sockets_in(tmpdir):
    return sorted(name for name in os.listdir(tmpdir) if name.endswith(".sock"))


def test_second_daemon_on_the_same_state_dir():
    with ct.Daemon() as d:
        d.create("disk1", it.sparse_file(d.path("disk1.img"), 16 * MiB), 1)
        state = d.state_bytes()
        other = it.make_tmpdir()
        argv = [it.IOBANDD, "--state-dir", d.state_dir, "--socket", os.path.join(other, "nbd.sock"),
                "--control", os.path.join(other, "ctl.sock")]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=it.TIMEOUT, stdin=subprocess.DEVNULL)
        assert r.returncode == 1, r.stderr
        assert f"pid {d.proc.pid} (iobandd)" in r.stderr and "one daemon per state directory" in r.stderr, r.stderr
        assert sockets_in(other) == []
        assert d.state_bytes() == state
        d.restart()
        assert "disk1" in ct.parse_table(d.table())


def test_an_image_written_by_one_daemon_is_refused_by_another():
    tmp = it.make_tmpdir()
    image = it.sparse_file(os.path.join(tmp, "shared.img"), 16 * MiB)
    with it.Server([f"a={image}"]) as first:
        pid = first.pid
        other = it.make_tmpdir()
        for spec in (f"b={image}", f"b={image},readonly"):
            status, out = iobandd(other, "--export", spec)
            assert status == 1, out
            assert f"pid {pid} (iobandd)" in out and image in out, out
            assert sockets_in(other) == []
        # Through the control plane of another daemon, too.
        with ct.Daemon() as second:
            r = second.ctl("create", "b", input=f"0 {16 * MiB // 512} ioband {image} 1\n")
            assert r.returncode == 1 and f"pid {pid} (iobandd)" in r.stderr, r.stderr
            assert ct.parse_table(second.table()) == {}
        # Two exports of one daemon cannot write one image either.
        status, out = iobandd(other, "--export", f"c={image}", "--export", f"d={image}")
        assert status == 1 and "refused" in out, out
        # Unless locks are turned off (benchmarks of several servers on one file).
        with it.Server([f"b={image}"], args=["--no-image-locks"]) as unlocked:
            h = unlocked.connect("b")
            h.pwrite(b"x" * 512, 0)
            h.shutdown()


def test_read_only_exports_share_an_image():
    tmp = it.make_tmpdir()
    image = it.sparse_file(os.path.join(tmp, "shared.img"), 16 * MiB)
    with it.Server([f"a={image},readonly"]) as first, it.Server([f"b={image},readonly"]) as second:
        for server, name in ((first, "a"), (second, "b")):
            h = server.connect(name)
            assert h.get_size() == 16 * MiB
            h.shutdown()
        # ... and a writer is refused while they read.
        status, out = iobandd(it.make_tmpdir(), "--export", f"c={image}")
        assert status == 1 and (f"pid {first.pid}" in out or f"pid {second.pid}" in out), out


def test_qemu_nbd_and_iobandd_respect_each_other():
    if not shutil.which("qemu-nbd"):
        it.skip("qemu-nbd is not installed")
    tmp = it.make_tmpdir()
    image = it.sparse_file(os.path.join(tmp, "a.img"), 16 * MiB)
    with it.Server([f"a={image}"]):
        r = subprocess.run(["qemu-nbd", "-f", "raw", "-k", os.path.join(tmp, "q.sock"), image],
                           capture_output=True, text=True, timeout=it.TIMEOUT)
        assert r.returncode != 0 and "lock" in r.stderr, r.stderr
    other = it.sparse_file(os.path.join(tmp, "b.img"), 16 * MiB)
    qsock = os.path.join(tmp, "q.sock")
    q = subprocess.Popen(["qemu-nbd", "-f", "raw", "-t", "-k", qsock, other], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        it.wait_ready(qsock, lambda: q.poll() is None, what="qemu-nbd")
        status, out = iobandd(it.make_tmpdir(), "--export", f"b={other}")
        assert status == 1 and f"pid {q.pid} (qemu-nbd)" in out, out
    finally:
        q.terminate()
        q.wait()


def test_sockets_removed_after_a_failed_start():
    tmp = it.make_tmpdir()
    image = it.sparse_file(os.path.join(tmp, "disk.img"), MiB)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    status, out = iobandd(tmp, "--export", f"d={image}", "--listen", f"127.0.0.1:{port}")
    assert status == 1 and "Address already in use" in out, out
    assert sockets_in(tmp) == [], out
    busy.close()


def test_sigterm_with_a_stuck_client_is_bounded_and_removes_the_sockets():
    tmp = it.make_tmpdir()
    image = os.path.join(tmp, "disk.img")
    with open(image, "wb") as f:
        f.write(os.urandom(MiB) * 64)
    s = ct.Daemon(tmp, args=["--export", f"d={image}"])
    s.start()
    raw = it.RawClient(s.socket_path)
    raw.greeting()
    raw.go("d")
    for i in range(8):
        raw.request(it.CMD_READ, offset=(i % 2) * 32 * MiB, length=32 * MiB)
    time.sleep(0.5)
    start = time.monotonic()
    s.signal(signal.SIGTERM)
    status = s.wait(timeout=it.TIMEOUT)
    took = time.monotonic() - start
    raw.close()
    assert status == 0, s.logs()[-2000:]
    assert took < 15, f"the stop took {took:.1f}s"
    assert "closing them" in s.logs(), s.logs()[-2000:]
    assert not os.path.exists(s.socket_path) and not os.path.exists(s.control)


def make_state_with(d, names):
    images = {}
    for name in names:
        images[name] = it.sparse_file(d.path(f"{name}.img"), 16 * MiB)
        d.create(name, images[name], 1)
    return images


def test_a_missing_image_skips_that_device_only():
    d = ct.Daemon()
    d.start()
    images = make_state_with(d, ["disk1", "disk2"])
    d.message("disk2", "weight", 40)
    d.stop()
    os.unlink(images["disk2"])
    extra = it.sparse_file(d.path("extra.img"), MiB)
    d.args += ["--export", f"extra={extra}"]
    d.start()
    logs = d.logs()
    assert "ioband device disk2 not restored" in logs and images["disk2"] in logs, logs[-2000:]
    assert list(ct.parse_table(d.table())) == ["disk1"]
    for name in ("disk1", "extra"):
        h = d.connect(name)
        h.pread(4096, 0)
        h.shutdown()
    # Kept in the state file through other changes, and its name is taken.
    d.message("disk1", "weight", 30)
    saved = {dev["name"]: dev for dev in json.loads(d.state_bytes())["devices"]}
    assert sorted(saved) == ["disk1", "disk2"] and saved["disk2"]["groups"][0]["weight"] == 40, saved
    r = d.ctl("create", "disk2", input=f"0 2048 ioband {extra} 1\n")
    assert r.returncode == 1 and "not restored" in r.stderr, r.stderr
    # --strict: the same state stops the start, naming the device, and
    # leaves no socket.
    d.stop()
    status, out = iobandd(d.dir, "--strict")
    assert status == 1 and "disk2" in out and images["disk2"] in out, out
    assert sockets_in(d.dir) == []
    # Removed: gone from the state file.
    d.start()
    d.ok("remove", "disk2")
    assert [dev["name"] for dev in json.loads(d.state_bytes())["devices"]] == ["disk1"]
    d.stop()


def test_a_fifo_export_is_refused_at_once():
    tmp = it.make_tmpdir()
    fifo = os.path.join(tmp, "pipe")
    os.mkfifo(fifo)
    for spec in (f"f={fifo}", f"f={fifo},readonly"):
        start = time.monotonic()
        status, out = iobandd(tmp, "--export", spec, timeout=it.TIMEOUT)
        assert status == 1 and "not a regular file or block device" in out, out
        assert time.monotonic() - start < 10
        assert sockets_in(tmp) == []


if __name__ == "__main__":
    sys.exit(it.run(__file__))
