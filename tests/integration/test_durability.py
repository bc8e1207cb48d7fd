#!/usr/bin/python3
"""kill -9 of the daemon right after the client has its acknowledgements:
every byte acknowledged as durable (a FUA write, or a write acknowledged
before a FLUSH that was acknowledged) is in the image, exactly, and nothing
else in the image changed. Four workloads: FUA writes one at a time,
writes then FLUSH, sequential streams (written back behind the stream
through the page cache) then FLUSH, and a hundred FUA writes in flight
with the kill while half of them are still unanswered.

What a process kill can show, and what it cannot. The page cache survives
the process, so on a plain file a missing fdatasync goes unseen: there the
test proves only that no acknowledgement precedes the write reaching the
kernel (a write still queued in the daemon, or handed to io_uring but not
started when the process dies, is cancelled and lost: that shows). The
second storage is a loop device over a file, served by iobandd as a block
device, with the test holding the device open so that the daemon's last
close does not write the device's page cache back: the comparison reads the
loop device's backing file, so it sees only what went below the device's
page cache. A FLUSH without fdatasync, or a FUA write through the page cache
without RWF_DSYNC, leaves its bytes out of the backing file and fails the
test (each run logs whether a write with neither is missing there: the
kernel may write it back early, and then that run could not tell). What no
process kill shows is whether the device then flushed its own cache to the
platter: that needs a power cut.
"""

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
SIZE = 32 * MiB
CONTROL = 28 * MiB + 1234  # where control_write() writes
FUA = nbd.CMD_FLAG_FUA

watchdog = it.pytest_watchdog()


def can_use_loop():
    if os.geteuid() != 0:
        return "a loop device needs root"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control"
    return None


@contextlib.contextmanager
def storage(kind):
    """(export path, backing file): the image, initially SIZE random bytes,
    as a plain file or through a loop device."""
    d = it.make_tmpdir("ioband-dur.")
    backing = it.random_file(os.path.join(d, "backing.img"), SIZE, seed=14)
    if kind == "file":
        yield d, backing, backing
        return
    reason = can_use_loop()
    if reason:
        pytest.skip(reason)
    loop = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"losetup: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    # Held open until the comparison is done: the daemon's close is then not
    # the last one, which would write the device's page cache back.
    hold = os.open(dev, os.O_RDONLY)
    try:
        yield d, dev, backing
    finally:
        os.close(hold)
        subprocess.run(["losetup", "--detach", dev])


class Image:
    """What the client knows about the image: the initial bytes, the writes
    acknowledged as durable and the others (unacknowledged, or acknowledged
    without FUA and with no FLUSH after them). Writes do not overlap."""

    def __init__(self, backing):
        with open(backing, "rb") as f:
            self.initial = f.read()
        self.durable = []
        self.maybe = []

    def compare(self, backing):
        with open(backing, "rb") as f:
            got = f.read()
        assert len(got) == len(self.initial)
        expected = bytearray(self.initial)
        for off, data in self.durable:
            expected[off:off + len(data)] = data
        # Bytes of the other writes may be old or new, each.
        free = bytearray(got)
        for off, data in self.maybe:
            old = self.initial[off:off + len(data)]
            seen = got[off:off + len(data)]
            if seen != old and seen != data:
                bad = [i for i in range(len(data)) if seen[i] not in (old[i], data[i])]
                assert not bad, (f"unacknowledged write at {off}+{len(data)}: {len(bad)} bytes neither old "
                                 f"nor new, the first at {off + bad[0]}")
            free[off:off + len(data)] = expected[off:off + len(data)]
        if free != expected:
            lost = [(off, len(data)) for off, data in self.durable if got[off:off + len(data)] != data]
            first = next(i for i in range(len(expected)) if free[i] != expected[i])
            raise AssertionError(f"{len(lost)} of {len(self.durable)} durable writes are not in the image "
                                 f"(first: {lost[:3]}); first wrong byte at {first}")
        return got


def wait_all(h, cookies):
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)


def shapes(rng, count, base, span):
    """`count` non-overlapping writes in [base, base + span): aligned 4 KiB
    and 64 KiB (direct), 512-byte aligned (direct or buffered), unaligned
    (through the page cache), 1 MiB."""
    out = []
    pos = base
    for i in range(count):
        kind = i % 5
        if kind == 0:
            pos = (pos + 4095) & ~4095
            n = 4096
        elif kind == 1:
            pos = (pos + 4095) & ~4095
            n = 65536
        elif kind == 2:
            pos = (pos + 511) & ~511
            n = 66048
        elif kind == 3:
            pos += rng.randrange(1, 4000)
            n = rng.randrange(1, 9000)
        else:
            pos = (pos + 4095) & ~4095
            n = MiB
        out.append((pos, rng.randbytes(n)))
        pos += n + rng.randrange(0, 3) * 4096
    assert pos <= base + span, "the writes do not fit their region"
    return out


def control_write(h, image):
    """A write with neither FUA nor a FLUSH after it, through the page cache
    (unaligned): on the loop device it should be missing from the backing
    file. Returns its bytes."""
    data = os.urandom(3000)
    h.pwrite(data, CONTROL)
    image.maybe.append((CONTROL, data))
    return data


@contextlib.contextmanager
def killed(kind, control=True):
    """(image, libnbd handle) of a daemon serving the image as `disk`; at
    the end of the block the daemon is killed with SIGKILL and the image
    compared with what the block put in image.durable and image.maybe.
    `control`: a control_write() before the kill, and a log line saying
    whether it was missing from the loop device's backing file, that is,
    whether this run could tell a missing fdatasync (not asserted: the
    kernel may have written it back anyway)."""
    with storage(kind) as (d, path, backing):
        image = Image(backing)
        with it.Server([f"disk={path}"], tmpdir=d) as s:
            h = s.connect("disk")
            yield image, h
            data = control_write(h, image) if control else None
            os.kill(s.pid, signal.SIGKILL)
            s.wait()
        got = image.compare(backing)
        if data and kind == "loop":
            missing = got[CONTROL:CONTROL + len(data)] != data
            it.log(f"an unflushed write is {'missing from' if missing else 'already in'} the backing file: "
                   f"this run {'could' if missing else 'could not'} tell a missing fdatasync")


KINDS = ["file", "loop"]


@pytest.mark.parametrize("kind", KINDS)
def test_fua_writes(kind):
    """(a) FUA writes, each acknowledged before the next is sent, among
    writes without FUA; kill -9 after the last acknowledgement."""
    rng = random.Random(1)
    with killed(kind) as (image, h):
        for i, (off, data) in enumerate(shapes(rng, 40, 0, 24 * MiB)):
            fua = i % 3 != 2
            h.pwrite(data, off, flags=FUA if fua else 0)
            (image.durable if fua else image.maybe).append((off, data))


@pytest.mark.parametrize("kind", KINDS)
def test_writes_then_flush(kind):
    """(b) Writes of every shape, 32 in flight, all acknowledged; then a
    FLUSH; kill -9 when the FLUSH is acknowledged."""
    rng = random.Random(2)
    with killed(kind) as (image, h):
        writes = shapes(rng, 80, 0, 26 * MiB)
        cookies = []
        for off, data in writes:
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off))
            if h.aio_in_flight() >= 32:
                h.poll(-1)
        wait_all(h, cookies)
        h.flush()
        image.durable += writes


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_streams_then_flush(kind):
    """(c) Sequential streams, which iobandd writes through the page cache
    and writes back behind the stream (large writes, and writes that are not
    whole pages), 8 in flight, then a FLUSH: everything up to the end of each
    stream is in the image, including the part the write-behind had not yet
    waited for (the last 8 MiB of a stream)."""
    rng = random.Random(3)
    with killed(kind) as (image, h):
        # A 16 MiB stream of 256 KiB writes, and a 6 MiB one of 66048-byte
        # writes at 512-byte offsets, in one connection.
        streams = [(0, 256 * 1024, 16 * MiB), (20 * MiB + 512, 66048, 6 * MiB)]
        cookies = []
        for start, size, length in streams:
            for pos in range(start, start + length, size):
                data = rng.randbytes(size)
                cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), pos))
                image.durable.append((pos, data))
                while h.aio_in_flight() >= 8:
                    h.poll(-1)
        wait_all(h, cookies)
        h.flush()


@pytest.mark.parametrize("kind", KINDS)
def test_fua_writes_in_flight(kind):
    """(d) 110 FUA writes of every shape in flight at once (pipelined);
    kill -9 as soon as half of them are acknowledged: the acknowledged ones
    are in the image, and the others hold old or new bytes."""
    rng = random.Random(4)
    with killed(kind, control=False) as (image, h):
        writes = shapes(rng, 110, 0, 30 * MiB)
        rng.shuffle(writes)
        pending = {}
        for off, data in writes:
            pending[h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off, flags=FUA)] = (off, data)
        while len(image.durable) < len(writes) // 2:
            h.poll(-1)
            for c in [c for c in pending if h.aio_command_completed(c)]:
                image.durable.append(pending.pop(c))
        image.maybe = list(pending.values())
        it.log(f"killing with {len(image.durable)} FUA writes acknowledged, {len(pending)} not")


def test_overlapping_writes_then_flush():
    """A client may send overlapping writes together; only the overlapped
    bytes are then undefined. Pairs of a 64 KiB aligned write (direct I/O)
    and a 100-byte write inside its first page (through the page cache), in
    flight at once: the FLUSH after them succeeds (a direct write that could
    not invalidate the page the other dirtied meanwhile made the kernel
    report EIO there), and every byte outside the overlaps is the 64 KiB
    write's, in the file too."""
    d = it.make_tmpdir("ioband-dur.")
    image = it.random_file(os.path.join(d, "disk.img"), SIZE, seed=15)
    with it.Server([f"disk={image}"], tmpdir=d) as s:
        h = s.connect("disk")
        for round_ in range(4):
            cookies, pairs = [], []
            for i in range(64):
                x = (round_ * 64 + i) * 65536
                big, small = os.urandom(65536), os.urandom(100)
                cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(small)), x + 1000))
                cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(big)), x))
                pairs.append((x, big, small))
            wait_all(h, cookies)
            h.flush()
            with open(image, "rb") as f:
                for x, big, small in pairs:
                    f.seek(x)
                    for got in (h.pread(65536, x), f.read(65536)):
                        assert got[:1000] == big[:1000] and got[1100:] == big[1100:], (
                            f"round {round_}: bytes of the write at {x} outside the overlap are lost")
                        assert all(g in (b, m) for g, b, m in zip(got[1000:1100], big[1000:1100], small)), (
                            f"round {round_}: the overlap at {x + 1000} holds bytes of neither write")
        h.shutdown()
        s.assert_alive()


def test_lost_writeback_fails_the_flush():
    """The other side of FLUSH: writes acknowledged from the page cache that
    the kernel then fails to write back must make the next FLUSH fail. The
    storage is a loop device over a sparse file on a 4 MiB tmpfs: writes
    into the loop device's page cache succeed, their writeback fails with
    ENOSPC. A sequential stream (write-behind), unaligned writes and a
    FUA write: the FLUSH after them fails, the connection goes on, and data
    that did fit reads back."""
    reason = can_use_loop()
    if reason:
        pytest.skip(reason)
    d = it.make_tmpdir("ioband-dur.")
    mnt = os.path.join(d, "mnt")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount tmpfs: {r.stderr.strip()}")
    try:
        backing = it.sparse_file(os.path.join(mnt, "backing.img"), SIZE)
        loop = subprocess.run(["losetup", "--find", "--show", backing], capture_output=True, text=True)
        if loop.returncode != 0:
            pytest.skip(f"losetup: {loop.stderr.strip()}")
        dev = loop.stdout.strip()
        try:
            with it.Server([f"disk={dev}"], tmpdir=d) as s:
                h = s.connect("disk")
                first = os.urandom(MiB)
                h.pwrite(first, 0, flags=FUA)  # fits: the file system is empty
                errors = 0
                cookies = []
                for pos in range(2 * MiB, 10 * MiB, 256 * 1024):  # a stream, past the space
                    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(os.urandom(256 * 1024))), pos))
                for i in range(64):  # unaligned writes: the page cache
                    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(os.urandom(3000))),
                                                12 * MiB + i * 8192 + 7))
                while h.aio_in_flight() > 0:
                    h.poll(-1)
                for c in cookies:
                    try:
                        h.aio_command_completed(c)
                    except nbd.Error as e:
                        assert e.errnum in (errno.EIO, errno.ENOSPC), f"a write failed with {e}"
                        errors += 1
                it.log(f"{errors} of {len(cookies)} writes failed before the FLUSH")
                err = it.expect_error(h.flush, errno.EIO, errno.ENOSPC,
                                      what="FLUSH after writes whose writeback failed")
                it.log(f"the FLUSH failed with {errno.errorcode[err]}")
                assert not h.aio_is_dead()
                assert h.pread(MiB, 0) == first
                h.shutdown()
                s.assert_alive()
        finally:
            subprocess.run(["losetup", "--detach", dev])
    finally:
        subprocess.run(["umount", "-l", mnt])


if __name__ == "__main__":
    sys.exit(it.run(__file__))
