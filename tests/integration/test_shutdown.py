#!/usr/bin/python3
"""Clean shutdown: SIGTERM (and SIGINT) while writes are in flight -> the
daemon exits 0, and every write it acknowledged is in the image file
afterwards (in-flight requests complete and are acknowledged first)."""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
BLOCK = 64 * 1024
SIZE = 64 * MiB
NBLOCKS = SIZE // BLOCK


watchdog = it.pytest_watchdog()


def block_data(i):
    """Block i's data says which block it is (the image starts all zeroes)."""
    return (i + 1).to_bytes(8, "little") * (BLOCK // 8)


def writer(server, name, sig, depth, connections):
    """Write each block once (distinct data) with `depth` writes in flight on
    each of `connections` connections; send `sig` to the daemon after a
    while, and go on until the connections end. Returns the blocks
    acknowledged and how many failed."""
    handles = [server.connect(name) for _ in range(connections)]
    next_block = 0
    pending = {}  # (handle index, cookie) -> block
    acked = []
    failed = 0
    signalled = False
    deadline = time.monotonic() + it.TIMEOUT * 2
    while time.monotonic() < deadline:
        for hi, h in enumerate(handles):
            if h.aio_is_dead() or h.aio_is_closed():
                continue
            # Keep `depth` in flight.
            while next_block < NBLOCKS and sum(1 for k in pending if k[0] == hi) < depth:
                try:
                    c = h.aio_pwrite(block_data(next_block), next_block * BLOCK)
                except nbd.Error:
                    break  # the connection is going away
                pending[(hi, c)] = next_block
                next_block += 1
            try:
                h.poll(100)
            except nbd.Error:
                pass
            for key in [k for k in pending if k[0] == hi]:
                try:
                    done = h.aio_command_completed(key[1])
                except nbd.Error:
                    failed += 1
                    del pending[key]
                    continue
                if done:
                    acked.append(pending.pop(key))
        if not signalled and len(acked) >= 100:
            it.log(f"sending {signal.Signals(sig).name} with {len(pending)} writes in flight")
            server.signal(sig)
            signalled = True
        if signalled and all(h.aio_is_dead() or h.aio_is_closed() for h in handles):
            break
        if next_block >= NBLOCKS and not pending:
            break
    assert signalled, f"only {len(acked)} writes acknowledged before the time limit"
    # Whatever libnbd still holds was never answered: count it as failed.
    failed += len(pending)
    for h in handles:
        try:
            h.close()
        except Exception:  # noqa: BLE001
            pass
    return acked, failed


@pytest.mark.parametrize("sig,connections", [(signal.SIGTERM, 1), (signal.SIGTERM, 2),
                                             (signal.SIGINT, 1)])
def test_signal_with_writes_in_flight(sig, connections):
    d = it.make_tmpdir()
    img = os.path.join(d, "disk.img")
    it.sparse_file(img, SIZE)
    s = it.Server([f"disk={img}"], tmpdir=d).start()
    try:
        acked, failed = writer(s, "disk", sig, depth=16, connections=connections)
        rc = s.wait(timeout=it.TIMEOUT)
    finally:
        s.stop()
        s.print_logs(limit=30)
    it.log(f"{len(acked)} writes acknowledged, {failed} not")
    assert rc == 0, f"{s.peer} exited with status {rc} after {signal.Signals(sig).name}"
    with open(img, "rb") as f:
        for b in sorted(acked):
            f.seek(b * BLOCK)
            assert f.read(BLOCK) == block_data(b), (
                f"block {b} was acknowledged but is not in the image after shutdown")


def test_sigterm_with_an_idle_client():
    """An open but idle connection does not keep the daemon from exiting:
    nothing is in flight, so it closes the connection and exits 0. (nbdkit
    1.32 waits for the client to hang up: in peer mode the client does.)"""
    d = it.make_tmpdir()
    s = it.Server(["ram=,backend=memory,size=1M"], tmpdir=d).start()
    try:
        h = s.connect("ram")
        h.pwrite(b"x" * 512, 0)
        s.signal(signal.SIGTERM)
        if s.peer == "nbdkit":
            try:
                h.shutdown()
            except nbd.Error:
                pass  # it closed first
        rc = s.wait(timeout=it.TIMEOUT)
    finally:
        s.stop(timeout=5)
        s.print_logs(limit=30)
    assert rc == 0, f"{s.peer} exited with status {rc} after SIGTERM"


if __name__ == "__main__":
    sys.exit(it.run(__file__))
