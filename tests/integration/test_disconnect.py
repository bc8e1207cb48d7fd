#!/usr/bin/python3
"""Clients that vanish with many requests in flight (kill -9 of a client
process; a socket closed in the middle of a write payload; a client that
never reads its replies) while another client keeps working: that client
sees no error and no wrong data, and the daemon keeps serving new ones."""

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB

# A client with 64 writes of 256 KiB and 32 reads of 2 MiB in flight; it
# stops reading replies once they are queued, and waits to be killed.
GREEDY_CLIENT = r"""
import nbd, os, sys, time
h = nbd.NBD()
h.set_export_name(sys.argv[2])
h.connect_unix(sys.argv[1])
data = os.urandom(256 * 1024)
for i in range(64):
    h.aio_pwrite(data, 32 * 1024 * 1024 + i * 256 * 1024)
bufs = [nbd.Buffer(2 * 1024 * 1024) for _ in range(32)]
for i, b in enumerate(bufs):
    h.aio_pread(b, i * 2 * 1024 * 1024)
# Push the requests out; take a few replies, then stop reading.
deadline = time.monotonic() + 30
while time.monotonic() < deadline and h.aio_in_flight() > 80:
    h.poll(100)
print("in flight:", h.aio_in_flight(), flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def server():
    d = it.make_tmpdir()
    it.sparse_file(os.path.join(d, "disk.img"), 64 * MiB)
    exports = ["ram=,backend=memory,size=64M", f"disk={d}/disk.img"]
    with it.Server(exports, tmpdir=d) as s:
        yield s
        s.assert_alive()


watchdog = it.pytest_watchdog()


class Worker:
    """A client that keeps writing and verifying its own region (the first
    16 MiB) in a thread until stopped; any error is a test failure."""

    def __init__(self, server, name):
        self.h = server.connect(name)
        self.stop = threading.Event()
        self.error = None
        self.rounds = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            i = 0
            while not self.stop.is_set():
                off = (i % 256) * 64 * 1024
                data = it.pattern(i, 64 * 1024)
                self.h.pwrite(data, off)
                got = self.h.pread(64 * 1024, off)
                if got != data:
                    raise AssertionError(f"round {i}: read back wrong data at {off}")
                i += 1
                self.rounds = i
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self, min_rounds=1):
        self.stop.set()
        self.thread.join(timeout=it.TIMEOUT)
        assert not self.thread.is_alive(), "the working client hung"
        assert self.error is None, f"the working client failed: {self.error!r}"
        assert self.rounds >= min_rounds, f"the working client did only {self.rounds} rounds"
        self.h.shutdown()


def wait_rounds(worker, n, timeout=it.TIMEOUT):
    deadline = time.monotonic() + timeout
    start = worker.rounds
    while worker.rounds < start + n and worker.error is None and time.monotonic() < deadline:
        time.sleep(0.05)


def serves(server, name):
    server.assert_alive()
    h = server.connect(name)
    data = os.urandom(8192)
    h.pwrite(data, 20 * MiB)
    assert h.pread(8192, 20 * MiB) == data
    h.shutdown()


@pytest.mark.parametrize("name", ["ram", "disk"])
def test_kill_9_client_with_requests_in_flight(server, name):
    worker = Worker(server, name)
    for round_ in range(3):
        p = subprocess.Popen(["/usr/bin/python3", "-c", GREEDY_CLIENT, server.sock(name), name],
                             stdout=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            assert line.startswith("in flight:"), f"greedy client: {line!r}"
            it.log(f"round {round_}: greedy client has {line.split(':')[1].strip()} requests in flight")
            wait_rounds(worker, 3)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
            p.stdout.close()
        wait_rounds(worker, 3)
        server.assert_alive()
    worker.finish(min_rounds=9)
    serves(server, name)


def test_socket_closed_mid_payload(server):
    worker = Worker(server, "ram")
    for cut in (10, 28, 28 + 1000, 28 + 65535):
        with server.raw("ram") as c:
            c.greeting()
            c.go("ram")
            # 50 whole writes, then one cut short `cut` bytes into the request.
            reqs = b"".join(struct.pack(">LHHQQL", it.REQUEST_MAGIC, 0, it.CMD_WRITE, i,
                                        32 * MiB + i * 65536, 65536) + bytes(65536)
                            for i in range(50))
            last = struct.pack(">LHHQQL", it.REQUEST_MAGIC, 0, it.CMD_WRITE, 99, 40 * MiB, 65536)
            last += bytes(65536)
            try:
                c.send(reqs + last[:cut])
            except OSError:
                pass
        wait_rounds(worker, 2)
    worker.finish(min_rounds=4)
    serves(server, "ram")


def test_client_that_never_reads_replies(server):
    """Reads whose replies fill the socket; then the client resets the connection."""
    worker = Worker(server, "ram")
    for _ in range(2):
        c = server.raw("ram")
        c.greeting()
        c.go("ram")
        for i in range(64):  # 64 x 4 MiB of replies nobody reads
            c.request(it.CMD_READ, (i % 16) * 4 * MiB, 4 * MiB)
        wait_rounds(worker, 3)
        # RST instead of FIN: SO_LINGER 0.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        wait_rounds(worker, 3)
    worker.finish(min_rounds=6)
    serves(server, "ram")


def test_many_clients_come_and_go(server):
    """Connections opened and dropped in bulk, half of them mid-request."""
    worker = Worker(server, "disk")
    for round_ in range(5):
        clients = []
        for i in range(20):
            c = server.raw("disk")
            c.greeting()
            c.go("disk")
            c.request(it.CMD_READ, i * MiB, MiB)
            if i % 2:
                c.request(it.CMD_WRITE, 40 * MiB + i * 4096, 4096, payload=bytes(100))
            clients.append(c)
        for c in clients:
            c.close()
        wait_rounds(worker, 2)
    worker.finish(min_rounds=10)
    serves(server, "disk")


if __name__ == "__main__":
    sys.exit(it.run(__file__))
