#!/usr/bin/python3
"""Storage that stalls for seconds stalls only its own device: while one
export's requests wait seconds in their storage, a client of another export on
the same daemon keeps being served (reads, writes and FLUSH each well under
the stall), whether the two share a reactor thread or not.

Two kinds of stall: the fault backend's fault-delay-ms (a timer: the
daemon's own queues and sessions must not serialise the exports), and a
real stalled file system for ioband devices in device groups: a FUSE file
(nbdfuse over nbdkit's delay filter) whose reads and writes block in the
kernel, which io_uring can only do on its worker threads (1 s a request,
about 4 at a time). The bound on the healthy client's latency is generous
(1 s; before the FUSE fix a healthy read on the same reactor took 1.8 s
here, and 11.7 s with 32 stalled requests of 3 s), and the test checks
that the stalled requests were still unanswered when the healthy client
finished, so the two really overlapped."""

import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
STALL_S = 2  # fault-delay-ms
FUSE_STALL_S = 1  # each FUSE request; it serves about 4 at a time
BOUND_S = 1.0  # the healthy client's worst request (6-125 ms measured)
HEALTHY_S = 1.0  # how long the healthy client runs, within the stall

watchdog = it.pytest_watchdog()


def check_isolation(stalled, healthy, what, stall, reads, writes=0, image=None):
    """Starts `reads` 4 KiB reads and `writes` 8 KiB writes (at 1 MiB) on
    the stalled export, then runs the healthy client: 4 KiB reads, 4 KiB
    writes and FLUSHes in turn for HEALTHY_S, each well under the stall.
    Then the stalled requests complete, and the writes are in `image`."""
    t0 = time.monotonic()
    bufs = [nbd.Buffer(4096) for _ in range(reads)]
    cookies = [stalled.aio_pread(b, i * 65536) for i, b in enumerate(bufs)]
    data = b"\x77" * 8192
    cookies += [stalled.aio_pwrite(data, MiB + i * 65536) for i in range(writes)]
    while time.monotonic() - t0 < 0.2:  # onto the wire and into the daemon
        stalled.poll(50)
    assert stalled.aio_in_flight() > 0, f"{what}: the stalled requests were answered at once"

    worst = {"read": 0.0, "write": 0.0, "flush": 0.0}
    rounds = 0
    while time.monotonic() - t0 < 0.2 + HEALTHY_S:
        for kind in worst:
            off = (rounds % 256) * 4096
            t1 = time.monotonic()
            if kind == "read":
                healthy.pread(4096, off)
            elif kind == "write":
                healthy.pwrite(bytes([rounds % 256]) * 4096, off)
            else:
                healthy.flush()
            worst[kind] = max(worst[kind], time.monotonic() - t1)
        rounds += 1
    pending = stalled.aio_in_flight()
    it.report(f"{what}: healthy client {rounds} rounds, worst read {worst['read'] * 1000:.0f} ms, "
              f"write {worst['write'] * 1000:.0f} ms, flush {worst['flush'] * 1000:.0f} ms; "
              f"{pending} stalled requests still waiting")
    assert pending > 0, f"{what}: the stalled requests finished before the healthy client; no overlap"
    for kind, seconds in worst.items():
        assert seconds < BOUND_S, (f"{what}: a {kind} on the healthy export took {seconds:.2f} s while the "
                                   f"other export's storage stalled for {stall} s a request")
    while stalled.aio_in_flight() > 0:
        stalled.poll(-1)
    for c in cookies:
        assert stalled.aio_command_completed(c)
    if image:
        with open(image, "rb") as f:
            for i in range(writes):
                f.seek(MiB + i * 65536)
                assert f.read(8192) == data, f"{what}: a stalled write is not in the image"


@pytest.mark.parametrize("threads", [1, 2])
def test_fault_delay_stalls_only_its_export(threads):
    """--export exports: export i lives on reactor i mod threads, so with 2
    threads 'slow' and 'fast' are on different reactors, with 1 on the same.
    The delay covers the first 2 MiB of 'slow', where its requests go."""
    d = it.make_tmpdir()
    slow = it.sparse_file(os.path.join(d, "slow.img"), 16 * MiB)
    fast = it.sparse_file(os.path.join(d, "fast.img"), 16 * MiB)
    exports = [f"slow={slow},fault-delay-ms={STALL_S * 1000},fault-offset=0,fault-length=2M", f"fast={fast}"]
    with it.Server(exports, tmpdir=d, args=["--threads", str(threads)]) as s:
        stalled = s.connect("slow")
        healthy = s.connect("fast")
        check_isolation(stalled, healthy, f"fault-delay-ms, {threads} thread(s)", STALL_S, reads=24, writes=8,
                        image=slow)
        stalled.shutdown()
        healthy.shutdown()
        s.assert_alive()


def stalling_file(d):
    return it.stalling_file(d, FUSE_STALL_S)


@pytest.mark.parametrize("threads,dgids", [(1, (1, 2)), (2, (1, 2))])
def test_stalled_device_group_stalls_only_itself(threads, dgids):
    """ioband devices in two device groups, one on a FUSE file stalled 1 s
    per request (about 4 at a time: 16 requests wait up to 4 s), the other on an image: device group g lives on reactor
    g mod threads, so with 2 threads they are on different reactors, with 1
    on the same."""
    d = it.make_tmpdir()
    with stalling_file(d) as stall_path:
        daemon = ct.Daemon(tmpdir=d, args=["--threads", str(threads)])
        with daemon:
            daemon.create("stalled", stall_path, dgids[0], sectors=16 * MiB // ct.SECTOR)
            daemon.create("healthy", ct.data_file(daemon.path("healthy.img"), 16 * MiB), dgids[1])
            stalled = daemon.connect("stalled")
            healthy = daemon.connect("healthy")
            # More than FUSE's max_background (12) requests: the 13th
            # blocked the reactor when it was submitted inline.
            check_isolation(stalled, healthy,
                            f"FUSE stall, {threads} thread(s), device groups {dgids[0]} and {dgids[1]}",
                            FUSE_STALL_S, reads=16)
            stalled.shutdown()
            healthy.shutdown()
            daemon.assert_alive()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
