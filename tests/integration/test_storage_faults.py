#!/usr/bin/python3
"""Storage that fails for real, below iobandd: a full file system (ENOSPC),
a file-size limit (short writes, then EFBIG), a file that shrank under the
export (short reads), and a bad range of the export (the fault backend's
fault-offset/fault-length). Each error reaches the client as the NBD error
of the same meaning (NBD_ENOSPC, NBD_EIO), a short transfer is completed or
answered EIO and never with wrong data, and the requests around the failing
ones, in flight on the same connection and on others, complete correctly.
test_faults.py covers the injected errnos one request at a time."""

import contextlib
import errno
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
KiB = it.KiB

watchdog = it.pytest_watchdog()


def require_root(what):
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


@contextlib.contextmanager
def small_file_system(kind, size):
    """A private directory on a file system of `size` bytes: tmpfs, or
    ext4 on a loop device (where iobandd writes with O_DIRECT through
    io_uring, not with the synchronous calls it uses on tmpfs)."""
    require_root("mounting a file system")
    d = it.make_tmpdir("ioband-fs.")
    mnt = os.path.join(d, "mnt")
    os.mkdir(mnt)
    if kind == "tmpfs":
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt]
    else:
        fs_image = it.sparse_file(os.path.join(d, "fs.img"), size)
        mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", fs_image], capture_output=True, text=True)
        if mkfs.returncode != 0:
            pytest.skip(f"mkfs.ext4: {mkfs.stderr.strip()}")
        argv = ["mount", "-o", "loop", fs_image, mnt]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{' '.join(argv)}: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt])


def run_all(h, requests):
    """Starts every request at once (aio); returns, in order, for each
    either the bytes read / True, or the errno it failed with."""
    cookies = []
    bufs = []
    for op, off, arg in requests:
        if op == "read":
            bufs.append(nbd.Buffer(arg))
            cookies.append(h.aio_pread(bufs[-1], off))
        elif op == "write":
            bufs.append(nbd.Buffer.from_bytearray(bytearray(arg)))
            cookies.append(h.aio_pwrite(bufs[-1], off))
        else:
            bufs.append(None)
            cookies.append(h.aio_flush())
    while h.aio_in_flight() > 0:
        h.poll(-1)
    out = []
    for c, b, (op, _, _) in zip(cookies, bufs, requests):
        try:
            h.aio_command_completed(c)
            out.append(bytes(b.to_bytearray()) if op == "read" else True)
        except nbd.Error as e:
            out.append(e.errnum)
    assert not h.aio_is_dead(), "the connection closed"
    return out


def image_dir_on(where, prefix):
    """A private directory on the test's file system ("disk") or on tmpfs
    (/dev/shm), removed at exit."""
    if where == "disk":
        return it.make_tmpdir(prefix)
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    d = tempfile.mkdtemp(prefix=prefix, dir="/dev/shm")
    it._tmpdirs.append(d)
    return d


def file_bytes(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


# --- a full file system --------------------------------------------------------

@pytest.mark.parametrize("kind", ["tmpfs", "ext4"])
def test_full_file_system(kind):
    """A sparse 64 MiB image on a file system of a few MiB: writes fill it
    until one fails with ENOSPC (some of them short: the space ends inside
    the write), every acknowledged byte is there, and then, with requests
    in flight together: writes into new space fail ENOSPC, reads and
    overwrites of what exists succeed, a FLUSH succeeds. A TRIM frees space
    for new writes."""
    with small_file_system(kind, 4 * MiB if kind == "tmpfs" else 16 * MiB) as mnt:
        image = it.sparse_file(os.path.join(mnt, "disk.img"), 64 * MiB)
        with it.Server([f"disk={image}"]) as s:
            h = s.connect("disk")
            other = s.connect("disk")
            rng = random.Random(7)
            written = {}
            pos = 0
            failed = None
            # Odd sizes: 192 KiB through the ring on tmpfs, 68 KiB not whole
            # pages (the page cache on ext4), 64 KiB direct.
            sizes = [192 * KiB, 68 * KiB, 64 * KiB]
            for i in range(2000):
                data = rng.randbytes(sizes[i % 3])
                try:
                    h.pwrite(data, pos)
                except nbd.Error as e:
                    failed = e.errnum
                    break
                written[pos] = data
                pos += len(data)
            it.log(f"{kind}: {pos / MiB:.2f} MiB written before a write failed ({failed})")
            assert failed == errno.ENOSPC, f"a write into a full {kind} failed with {failed}, expected ENOSPC"
            assert pos >= MiB, f"only {pos} bytes written"
            for off, data in written.items():
                assert h.pread(len(data), off) == data, f"acknowledged write at {off} reads back wrong"
                assert file_bytes(image, off, len(data)) == data, f"acknowledged write at {off} not in the file"
            # In flight together: new space (fails), old space (works). No
            # two requests in flight touch the same range: the order of
            # overlapping requests in flight is the server's choice (NBD).
            offs = sorted(written)
            old_space = rng.sample(offs, len(offs))
            requests = []
            expect = []
            for i in range(48):
                if i % 3 != 0 and not old_space:
                    continue
                old = old_space.pop() if i % 3 != 0 else None
                n = len(written[old]) if old is not None else 0
                if i % 3 == 0:
                    requests.append(("write", 32 * MiB + i * 256 * KiB, rng.randbytes(256 * KiB)))
                    expect.append(errno.ENOSPC)
                elif i % 3 == 1:
                    requests.append(("read", old, n))
                    expect.append(written[old])
                else:
                    data = rng.randbytes(n)
                    requests.append(("write", old, data))
                    written[old] = data
                    expect.append(True)
            requests.append(("flush", 0, 0))
            expect.append(True)
            got = run_all(h, requests)
            for i, (g, e) in enumerate(zip(got, expect)):
                assert g == e, (f"request {i} ({requests[i][0]} at {requests[i][1]}): got "
                                f"{g if not isinstance(g, bytes) else 'other data'}, expected "
                                f"{e if not isinstance(e, bytes) else 'the written data'}")
            for off, data in written.items():
                assert other.pread(len(data), off) == data, f"write at {off} reads back wrong on another connection"
            # TRIM gives space back.
            freed = offs[0]
            h.trim(len(written[freed]) * 4, freed)
            h.flush()
            h.pwrite(b"\x5a" * 64 * KiB, 48 * MiB)
            assert other.pread(64 * KiB, 48 * MiB) == b"\x5a" * 64 * KiB
            h.shutdown()
            other.shutdown()
            s.assert_alive()


# --- short writes: the file-size limit -----------------------------------------

@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_short_writes_at_the_file_size_limit(where):
    """iobandd under a file-size limit (ulimit -f, systemd's LimitFSIZE) of
    8 MiB: a write across it is short, the rest fails with EFBIG, which the
    client gets as ENOSPC; a write beyond it fails the same way (without the
    daemon ignoring SIGXFSZ, the signal killed it). Writes and reads below
    the limit in flight with the failing ones work, and the daemon lives."""
    if it.PEER != "iobandd":
        pytest.skip("the limit is set on iobandd's process")
    image_dir = image_dir_on(where, "ioband-fsize.")
    image = it.random_file(os.path.join(image_dir, "disk.img"), 16 * MiB, seed=3)
    limit = 8 * MiB
    with it.Server([f"disk={image}"]) as s:
        resource.prlimit(s.pid, resource.RLIMIT_FSIZE, (limit, limit))
        h = s.connect("disk")
        rng = random.Random(5)
        # One at a time: writes across the limit overlap one another, and
        # overlapping writes in flight together are not this test's subject.
        for n, back in [(4096, 2048), (65536, 32768), (256 * KiB, 1000), (3000, 1500), (MiB, 4096)]:
            it.expect_error(lambda: h.pwrite(rng.randbytes(n), limit - back), errno.ENOSPC,
                            what=f"write of {n} bytes across the limit")
        requests, expect = [], []
        below = {}
        for i in range(40):
            if i == 0:  # across the limit
                requests.append(("write", limit - 5000, rng.randbytes(9000)))
                expect.append(errno.ENOSPC)
            elif i % 3 == 0:  # beyond it
                requests.append(("write", limit + i * 64 * KiB, rng.randbytes(4096 * (1 + i % 3) + i)))
                expect.append(errno.ENOSPC)
            elif i % 3 == 1:  # below it
                off = i * 64 * KiB
                below[off] = rng.randbytes(64 * KiB - i * 100)
                requests.append(("write", off, below[off]))
                expect.append(True)
            else:  # reads beyond it: reads are not limited
                off = limit + i * 64 * KiB + 4096
                requests.append(("read", off, 8 * KiB))
                expect.append(file_bytes(image, off, 8 * KiB))
        got = run_all(h, requests)
        s.assert_alive()
        for i, (g, e) in enumerate(zip(got, expect)):
            assert g == e, (f"request {i} ({requests[i][0]} at {requests[i][1]}+{len(requests[i][2]) if requests[i][0] == 'write' else requests[i][2]}): "
                            f"got {g if not isinstance(g, bytes) else 'other data'}, expected "
                            f"{e if not isinstance(e, bytes) else 'the file data'}")
        h.flush()
        for off, data in below.items():
            assert h.pread(len(data), off) == data
            assert file_bytes(image, off, len(data)) == data
        h.shutdown()
        s.assert_alive()


# --- short reads: a file that shrank -------------------------------------------

@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_short_reads_of_a_file_that_shrank(where):
    """The image is truncated under the export (an operator's slip): reads
    across or past the new end of the file get short reads from the kernel
    and are answered EIO, never with zeros or stale bytes, whatever path
    they take (direct aligned, unaligned through a bounce buffer, a
    sequential stream through the page cache, sendfile on tmpfs); reads
    before the end, in flight with them, return the data, and the
    connection stays open."""
    image_dir = image_dir_on(where, "ioband-shrink.")
    image = it.random_file(os.path.join(image_dir, "disk.img"), 16 * MiB, seed=9)
    content = file_bytes(image, 0, 16 * MiB)
    end = 8 * MiB + 1000
    with it.Server([f"disk={image}"]) as s:
        h = s.connect("disk")
        assert h.pread(MiB, 8 * MiB) == content[8 * MiB:9 * MiB]  # cached, if anything is
        os.truncate(image, end)
        requests, expect = [], []
        shapes = [(8 * MiB, 4096), (8 * MiB, MiB), (8 * MiB + 4096, 4096), (end - 600, 600 + 1), (9 * MiB, 64 * KiB),
                  (9 * MiB, 256 * KiB), (8 * MiB - 512, 2048), (12 * MiB, 4 * MiB)]
        for i, (off, n) in enumerate(shapes):
            requests.append(("read", off, n))
            expect.append(errno.EIO)
            good = (i * 997 * KiB) % (7 * MiB)
            requests.append(("read", good, 128 * KiB))
            expect.append(content[good:good + 128 * KiB])
        requests.append(("read", end - 400, 400))  # just before the end: fine
        expect.append(content[end - 400:end])
        # A sequential stream that runs into the end.
        for off in range(6 * MiB, 10 * MiB, 512 * KiB):
            requests.append(("read", off, 512 * KiB))
            expect.append(content[off:off + 512 * KiB] if off + 512 * KiB <= end else errno.EIO)
        got = run_all(h, requests)
        for i, (g, e) in enumerate(zip(got, expect)):
            _, off, n = requests[i]
            assert g == e, (f"read {i} at {off}+{n} (file ends at {end}): got "
                            f"{g if not isinstance(g, bytes) else f'{len(g)} bytes of data'}, expected "
                            f"{e if not isinstance(e, bytes) else 'the file data'}")
        assert h.pread(4096, 0) == content[:4096]
        h.shutdown()
        s.assert_alive()


# --- a bad range ---------------------------------------------------------------

BLOCK = 128 * KiB
BAD = (MiB, MiB + 64 * KiB)  # fault-offset=1M,fault-length=64K


def bad_range_plan(rng, conn, count, err, content):
    """`count` requests for connection `conn` (0 or 1) and what each must
    give. Half of them near the bad range. Requests touching it fail whole
    (the fault backend fails them before the storage sees them); other
    writes go to blocks of their own (block % 4 == 2 * conn), reads to
    blocks nobody writes (odd ones), so every answer is known in advance."""
    requests, expect = [], []
    free_blocks = [b for b in range(len(content) // BLOCK) if b % 4 == 2 * conn]
    rng.shuffle(free_blocks)
    while len(requests) < count:
        n = rng.choice([512, 4096, 5000, 64 * KiB])
        near = rng.random() < 0.5
        off = rng.randrange(BAD[0] - 96 * KiB, BAD[1] + 96 * KiB) if near else rng.randrange(0, len(content) - n)
        touches = off < BAD[1] and BAD[0] < off + n
        if rng.random() < 0.4 and (touches or free_blocks):
            if not touches:
                block = free_blocks.pop()
                off = block * BLOCK + rng.randrange(0, BLOCK - n + 1)
                touches = off < BAD[1] and BAD[0] < off + n
            data = rng.randbytes(n)
            requests.append(("write", off, data))
            if not touches:
                content[off:off + n] = data
            expect.append(getattr(errno, err) if touches else True)
        elif touches or all(b % 2 for b in range(off // BLOCK, (off + n - 1) // BLOCK + 1)):
            requests.append(("read", off, n))
            expect.append(getattr(errno, err) if touches else bytes(content[off:off + n]))
    requests.append(("flush", 0, 0))
    expect.append(True)
    return requests, expect


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
def test_bad_range_among_good_requests(err):
    """fault-offset/fault-length: requests touching [1 MiB, 1 MiB + 64 KiB)
    fail with the errno; the others, of 120 in flight on each of two
    connections at once, succeed with the right data; FLUSH succeeds; the
    image holds every successful write and nothing of the failed ones."""
    if it.PEER != "iobandd":
        pytest.skip("nbdkit's error filter has no offset range")
    d = it.make_tmpdir()
    image = it.random_file(os.path.join(d, "disk.img"), 32 * MiB, seed=11)
    content = bytearray(file_bytes(image, 0, 32 * MiB))
    with it.Server([f"disk={image},fault-errno={err},fault-offset=1M,fault-length=64K"], tmpdir=d) as s:
        rng = random.Random(13)
        plans = [bad_range_plan(rng, k, 120, err, content) for k in range(2)]
        hs = [s.connect("disk") for _ in range(2)]
        results = [None, None]
        threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, run_all(hs[k], plans[k][0])))
                   for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=it.TIMEOUT)
        failures = 0
        for k, (requests, expect) in enumerate(plans):
            assert results[k] is not None, f"connection {k} did not finish"
            for i, (g, e) in enumerate(zip(results[k], expect)):
                op, off, arg = requests[i]
                failures += isinstance(e, int) and e is not True
                assert g == e, (f"connection {k} request {i} ({op} at {off}): got "
                                f"{'data' if isinstance(g, bytes) else g}, expected {'data' if isinstance(e, bytes) else e}")
        it.log(f"{failures} of {sum(len(r) for r, _ in plans)} requests failed with {err}")
        assert failures >= 20, f"only {failures} requests touched the bad range"
        assert file_bytes(image, 0, 32 * MiB) == bytes(content), "the image differs from the successful writes"
        for h in hs:
            h.shutdown()
        s.assert_alive()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
