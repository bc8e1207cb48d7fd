#!/usr/bin/python3
"""Sequential streams on an O_DIRECT export: a stream of reads that each
start where the one before ended goes through the page cache, so that the
kernel's readahead runs ahead of the client, and drops what it has read; a
stream of writes goes through the page cache and is written back behind
itself. The client must get the file's bytes (also with several streams on
one connection and with reads of odd sizes), see every write acknowledged
before its read, aligned (O_DIRECT) or not, whatever readahead had cached,
find a written stream in the file after FLUSH, and no stream may leave the
file in the page cache."""

import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()
it.require_tools("fincore")

MiB = it.MiB
SIZE = 64 * MiB


def drop_cache(path):
    with open(path, "rb") as f:
        os.fdatasync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def resident_bytes(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


@pytest.fixture(scope="module")
def image():
    d = it.make_tmpdir()
    path = os.path.join(d, "disk.img")
    it.random_file(path, SIZE, seed=11)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    return d, path, data


@pytest.fixture(scope="module")
def server(image):
    d, path, _ = image
    with it.Server([f"disk={path}"], tmpdir=d) as s:
        if "O_DIRECT" not in s.logs():
            pytest.skip(f"{d} does not take O_DIRECT: no sequential path to test")
        yield s
        s.assert_alive()


watchdog = it.pytest_watchdog()


def in_order(h, starts, depth):
    """Calls each of starts (each starts one aio command and returns its
    cookie) in order, with at most `depth` commands in flight; returns when
    all have completed (a failed one raises)."""
    pending = []

    def settle(limit):
        while len(pending) > limit:
            h.poll(-1)
            while pending and h.aio_command_completed(pending[0]):
                pending.pop(0)
    for start in starts:
        settle(depth - 1)
        pending.append(start())
    settle(0)


def stream(h, start, end, size, depth):
    """Reads [start, end) in order, `size` bytes a read, `depth` in flight."""
    bufs = []

    def read(off):
        bufs.append(nbd.Buffer(min(size, end - off)))
        buf = bufs[-1]
        return lambda: h.aio_pread(buf, off)
    in_order(h, (read(off) for off in range(start, end, size)), depth)
    return b"".join(bytes(b.to_bytearray()) for b in bufs)


def test_stream_reads_the_file_and_leaves_no_cache(server, image):
    _, path, data = image
    drop_cache(path)
    h = server.connect("disk")
    assert stream(h, 0, SIZE, MiB, 8) == data
    h.shutdown()
    # Without the drop the whole file (64 MiB) stays cached.
    assert resident_bytes(path) <= SIZE // 4


@pytest.mark.parametrize("size", [4096, 65536 + 512, 3 * MiB + 17])
def test_odd_sizes_and_interleaved_streams(server, image, size):
    _, path, data = image
    drop_cache(path)
    h = server.connect("disk")
    a, b = 4 * MiB + 100, 40 * MiB
    pos_a, pos_b = a, b
    for _ in range(6):
        assert h.pread(size, pos_a) == data[pos_a:pos_a + size], f"stream a at {pos_a}"
        assert h.pread(size, pos_b) == data[pos_b:pos_b + size], f"stream b at {pos_b}"
        pos_a += size
        pos_b += size
    h.shutdown()


def stream_write(h, start, payload, size, depth):
    """Writes payload at start in order, `size` bytes a write, `depth` in flight."""
    def write(pos):
        buf = nbd.Buffer.from_bytearray(bytearray(payload[pos:pos + size]))
        return lambda: h.aio_pwrite(buf, start + pos)
    in_order(h, (write(pos) for pos in range(0, len(payload), size)), depth)


@pytest.mark.parametrize("size", [MiB, 4096, 65536 + 512])
def test_write_stream_lands_and_leaves_little_cached(server, image, size):
    """Sequential writes go through the page cache and are written back
    behind the stream: every byte must read back, through the export (direct
    reads and a sequential stream) and from the file after FLUSH, and the
    stream must not leave itself in the page cache."""
    _, path, data = image
    drop_cache(path)
    h = server.connect("disk")
    # Large streams go through the page cache, and so does the 66048-byte
    # one at 512-byte offsets, whose writes are not whole pages (writes
    # sharing a page must not mix direct and buffered I/O: that one failed
    # with EIO when they did); 4 KiB ones stay direct. Each is written back
    # behind itself: without that the 66048-byte stream stayed cached
    # whenever its writeback had not finished before the read stream passed.
    start, length = 40 * MiB + (0 if size % 4096 == 0 else 512), 20 * MiB
    payload = os.urandom(length)
    stream_write(h, start, payload, size, 8)
    data[start:start + length] = payload
    for off in range(start, start + length, 3 * MiB + 4096):
        n = min(MiB, start + length - off)
        assert h.pread(n, off) == payload[off - start:off - start + n], f"read at {off}"
    assert stream(h, start, start + length, MiB, 4) == payload
    h.flush()
    assert resident_bytes(path) <= SIZE // 4
    with open(path, "rb") as f:
        f.seek(start)
        assert f.read(length) == payload
    h.shutdown()


def test_writes_sharing_pages_in_flight(server, image):
    """Writes at 512-byte offsets and unaligned ones, all in flight at once,
    several in each page: direct and buffered writes must never share a page
    (the direct one's bytes would be overwritten by the page's writeback,
    and the kernel reports EIO). Every byte must read back."""
    _, path, data = image
    h = server.connect("disk")
    for start in (30 * MiB, 31 * MiB, 32 * MiB, 33 * MiB):
        pos = start
        pending = []
        for i in range(512):
            n = 1536 if i % 2 == 0 else 100
            payload = os.urandom(n)
            pending.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(payload)), pos))
            data[pos:pos + n] = payload
            pos += n + (412 if i % 2 else 0)  # aligned writes start at 512-byte offsets
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for cookie in pending:
            assert h.aio_command_completed(cookie)
        h.flush()
        assert h.pread(pos - start, start) == data[start:pos]
        with open(path, "rb") as f:
            f.seek(start)
            assert f.read(pos - start) == data[start:pos]
    h.shutdown()


@pytest.mark.parametrize("offset,length", [(20 * MiB + 4096, 65536), (22 * MiB + 100, 1000)])
def test_writes_ahead_of_a_stream_are_read(server, image, offset, length):
    """Readahead caches the file ahead of the stream; a write there, direct
    (aligned) or through the page cache (unaligned), must be what the
    stream then reads."""
    _, path, data = image
    drop_cache(path)
    h = server.connect("disk")
    w = server.connect("disk")
    start = offset - offset % MiB - 2 * MiB
    assert stream(h, start, start + 2 * MiB, MiB, 2) == data[start:start + 2 * MiB]
    payload = os.urandom(length)
    w.pwrite(payload, offset)
    data[offset:offset + length] = payload
    end = start + 6 * MiB
    assert stream(h, start + 2 * MiB, end, MiB, 2) == data[start + 2 * MiB:end]
    w.flush()
    with open(path, "rb") as f:
        f.seek(offset)
        assert f.read(length) == payload
    h.shutdown()
    w.shutdown()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
