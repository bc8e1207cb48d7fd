#!/usr/bin/python3
"""A raw export whose file lives on a memory file system (tmpfs): small
requests are served by synchronous calls on the reactor, large reads are
sent straight from the file with sendfile() (no copy in the daemon).  Both
must return the file's bytes with simple and structured replies, with many
requests of mixed sizes in flight; a client that never reads such replies
must not hold the daemon; a file that shrinks under the daemon costs that
connection only."""

import os
import socket
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
SIZE = 48 * MiB
SHM = "/dev/shm"


def on_tmpfs(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    best = max((m for m in mounts if path == m[1] or path.startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    return st.f_bavail * st.f_frsize > 2 * SIZE and best is not None and best[2] == "tmpfs"


if not on_tmpfs(SHM):
    it.skip(f"{SHM} is not a tmpfs with {2 * SIZE >> 20} MiB free")


@pytest.fixture(scope="module")
def image():
    d = it.make_tmpdir()
    path = os.path.join(SHM, f"ioband-test-{os.getpid()}.img")
    it.random_file(path, SIZE, seed=7)
    with open(path, "rb") as f:
        data = f.read()
    yield d, path, data
    os.unlink(path)


@pytest.fixture(scope="module")
def server(image):
    d, path, _ = image
    with it.Server([f"shm={path}"], tmpdir=d) as s:
        yield s
        s.assert_alive()


watchdog = it.pytest_watchdog()

SIZES = [1, 4096, 65535, 64 * 1024, 70000, 128 * 1024, MiB, 3 * MiB + 5]


@pytest.mark.parametrize("structured", [True, False])
def test_reads_match_the_file(server, image, structured):
    data = image[2]
    h = server.connect("shm", structured=structured)
    for i, n in enumerate(SIZES):
        off = (i * 1234567) % (SIZE - n)
        assert h.pread(n, off) == data[off:off + n], f"{n} bytes at {off}"
    assert h.pread(MiB, SIZE - MiB) == data[-MiB:]
    h.shutdown()


@pytest.mark.parametrize("structured", [True, False])
def test_mixed_reads_in_flight(server, image, structured):
    data = image[2]
    h = server.connect("shm", structured=structured)
    pending = []
    for i in range(96):
        n = SIZES[i % len(SIZES)]
        off = (i * 7919 * 4096 + i) % (SIZE - n)
        buf = nbd.Buffer(n)
        h.aio_pread(buf, off)
        pending.append((buf, off, n))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for buf, off, n in pending:
        assert buf.to_bytearray() == data[off:off + n], f"{n} bytes at {off}"
    h.shutdown()


def test_writes_then_large_reads(server, image):
    h = server.connect("shm")
    payload = os.urandom(2 * MiB)
    h.pwrite(payload, 8 * MiB + 512)
    assert h.pread(2 * MiB, 8 * MiB + 512) == payload
    assert h.pread(4 * MiB, 7 * MiB)[MiB + 512:MiB + 512 + 2 * MiB] == payload
    h.pwrite(image[2][8 * MiB:11 * MiB], 8 * MiB)  # restore for the other tests
    h.shutdown()


def test_client_that_never_reads_large_replies(server, image):
    """64 reads of 4 MiB nobody reads, then a reset: others are served."""
    data = image[2]
    for _ in range(2):
        c = server.raw("shm")
        c.greeting()
        c.go("shm")
        for i in range(64):
            c.request(it.CMD_READ, (i % 8) * 4 * MiB, 4 * MiB)
        h = server.connect("shm")
        assert h.pread(MiB, 5 * MiB) == data[5 * MiB:6 * MiB]
        h.shutdown()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    server.assert_alive()


def test_file_shrinks_under_the_daemon(image):
    """The file is cut while served: a large read past the new end breaks
    that connection only (its reply header is out before the data is
    missed); the daemon lives and serves the rest."""
    d, _, data = image
    path = os.path.join(SHM, f"ioband-test-{os.getpid()}-shrink.img")
    with open(path, "wb") as f:
        f.write(data[:8 * MiB])
    try:
        with it.Server([f"cut={path}"], tmpdir=it.make_tmpdir()) as s:
            h = s.connect("cut")
            assert h.pread(MiB, 6 * MiB) == data[6 * MiB:7 * MiB]
            os.truncate(path, 4 * MiB)
            with pytest.raises(nbd.Error):
                h.pread(MiB, 6 * MiB)
            s.assert_alive()
            h2 = s.connect("cut")
            assert h2.pread(MiB, MiB) == data[MiB:2 * MiB]
            h2.shutdown()
            s.assert_alive()
    finally:
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(it.run(__file__))
