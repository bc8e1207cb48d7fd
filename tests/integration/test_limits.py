#!/usr/bin/python3
"""Bounded resources: clients that connect and say nothing, go idle, come
too many, or ask for data and never read it cost the daemon a bounded
amount of time, descriptors and memory, and are told or closed; the daemon
never spins, and serves new clients once they are gone."""

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
MEMORY = "m=,backend=memory,size=512M"


def server(*args, exports=(MEMORY,), listen=None):
    return it.Server(list(exports), args=list(args), listen=listen)


def connect(srv):
    h = nbd.NBD()
    h.connect_uri(srv.uri("m"))
    return h


def closed_within(raw, seconds):
    """Seconds until the server closed the raw connection (reading what it sends)."""
    start = time.monotonic()
    raw.wait_closed(timeout=seconds)
    return time.monotonic() - start


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def eventually(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_handshake_timeout_closes_a_client_that_says_nothing():
    with server("--handshake-timeout", "1") as srv:
        with it.RawClient(srv.socket_path) as silent, it.RawClient(srv.socket_path) as slow:
            silent.recv_exact(18)  # the greeting, then nothing from the client
            slow.greeting()        # flags sent, but no option ever
            took = closed_within(silent, 10)
            assert 0.9 <= took <= 4, f"closed after {took:.1f} s with --handshake-timeout 1"
            closed_within(slow, 4)
        # A client that finished its handshake is not subject to it, and
        # idle connections are not closed by default (--idle-timeout 0).
        h = connect(srv)
        time.sleep(2.5)
        h.pwrite(b"x" * 4096, 0)
        assert h.pread(4096, 0) == b"x" * 4096
        h.shutdown()
        assert "no handshake within --handshake-timeout" in srv.logs()


def test_idle_timeout_closes_idle_connections_only():
    with server("--idle-timeout", "2") as srv:
        idle = connect(srv)
        busy = connect(srv)
        for _ in range(8):  # 4 s of a request every 0.5 s
            busy.pread(4096, 0)
            time.sleep(0.5)
        with pytest.raises(nbd.Error):
            idle.pread(4096, 0)
        busy.pread(4096, 0)
        busy.shutdown()
        assert "idle for --idle-timeout" in srv.logs()


def status_limits(srv):
    """The counters of `iobandctl --json status`."""
    ctl = os.environ.get("IOBANDCTL") or os.path.join(os.path.dirname(it.IOBANDD), "iobandctl")
    out = subprocess.run([ctl, "--control", os.path.join(srv.state_dir, "ioband.ctl"), "--json", "status"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return json.loads(out)["data"]["server_limits"]


def test_idle_connections_give_back_their_counted_buffers():
    """Each connection's 32 KiB staging buffer is counted in the request
    memory, and a connection idle for a second gives it back (and its
    cached request buffers); the first request after that is served as
    before, in transmission and in the middle of option haggling."""
    n = 20
    with server() as srv:
        handles = [connect(srv) for _ in range(n)]
        haggling = nbd.NBD()
        haggling.set_opt_mode(True)
        haggling.connect_uri(srv.uri("m"))
        for i, h in enumerate(handles):
            h.pwrite(bytes([i]) * 65536, i * 65536)
        limits = status_limits(srv)
        assert limits["connections"] == n + 1, limits
        assert limits["request_memory_staging_bytes"] <= limits["request_memory_bytes"], limits
        # At least one connection's staging buffer and write buffer were counted
        # together (not all 21: a slow machine may release the first meanwhile).
        assert limits["request_memory_peak_bytes"] >= 32 * 1024 + 65536, limits
        eventually(lambda: status_limits(srv)["request_memory_bytes"] == 0, 10,
                   "idle connections giving back their buffers")
        for i, h in enumerate(handles):
            assert h.pread(65536, i * 65536) == bytes([i]) * 65536
        haggling.opt_go()
        assert haggling.pread(65536, 65536) == bytes([1]) * 65536
        limits = status_limits(srv)
        assert limits["connections"] == n + 1 and limits["idle_timeouts"] == 0, limits
        for h in handles + [haggling]:
            h.shutdown()


def refused(srv, uri=None):
    """qemu-img info: exit status and what it printed (the server's message)."""
    r = subprocess.run(["qemu-img", "info", "--output=json", uri or srv.uri("m")],
                       capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr


def test_connection_cap_refuses_cleanly_and_frees_a_place():
    it.require_tools("qemu-img")
    with server("--max-connections", "2") as srv:
        first, second = connect(srv), connect(srv)
        code, out = refused(srv)
        assert code != 0
        assert "limit of 2 connections" in out and "--max-connections" in out, out
        # libnbd gets an error too, not a hang.
        with pytest.raises(nbd.Error):
            connect(srv)
        first.shutdown()
        eventually(lambda: refused(srv)[0] == 0, 10, "a client after one left")
        h = connect(srv)
        h.pread(4096, 0)
        second.pread(4096, 0)
        assert "refused a connection" in srv.logs()
        limits = status_limits(srv)
        assert limits["refused_max_connections"] >= 2 and limits["connections"] >= 2, limits


def test_per_client_cap_counts_each_identity():
    it.require_tools("qemu-img")
    port = it.free_tcp_port()
    with server("--max-connections-per-client", "2", listen=f"127.0.0.1:{port}") as srv:
        held = [connect(srv), connect(srv)]
        code, out = refused(srv)
        assert code != 0 and f"uid {os.getuid()} has reached its limit of 2" in out, out
        # Another identity (the TCP address) has places of its own.
        tcp = nbd.NBD()
        tcp.connect_uri(srv.tcp_uri("m"))
        tcp.pread(4096, 0)
        held.pop().shutdown()
        eventually(lambda: refused(srv)[0] == 0, 10, "a client of the same uid after one left")
        tcp.shutdown()


def test_out_of_descriptors_pauses_accept_without_spinning(tmp_path):
    it.require_tools("prlimit")
    wrapper = tmp_path / "iobandd-64fds"
    wrapper.write_text(f"#!/bin/sh\nexec prlimit --nofile=64:64 {it.IOBANDD} \"$@\"\n")
    wrapper.chmod(0o755)
    real, it.IOBANDD = it.IOBANDD, str(wrapper)
    try:
        with server("--max-connections", "0", "--handshake-timeout", "0") as srv:
            it.IOBANDD = real
            out_of_descriptors(srv)
    finally:
        it.IOBANDD = real


def out_of_descriptors(srv):
    if True:
        clients = []
        for _ in range(120):  # more than the daemon has descriptors for
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(srv.socket_path)
            clients.append(s)
        time.sleep(0.5)
        cpu0, wall0 = cpu_seconds(srv.pid), time.monotonic()
        time.sleep(3)
        cpu = cpu_seconds(srv.pid) - cpu0
        wall = time.monotonic() - wall0
        assert cpu < 0.3 * wall, f"daemon used {cpu:.2f} s of CPU in {wall:.1f} s while out of descriptors"
        logs = srv.logs()
        lines = [line for line in logs.splitlines() if "Too many open files" in line]
        assert 1 <= len(lines) <= 3, f"{len(lines)} log lines about the descriptors:\n" + "\n".join(lines[:5])
        for s in clients:
            s.close()
        # The pause ends by itself: a new client is served.
        h = nbd.NBD()
        start = time.monotonic()
        h.connect_uri(srv.uri("m"))
        h.pread(4096, 0)
        h.shutdown()
        assert time.monotonic() - start < 10
        srv.assert_alive()


def slow_reader(path, reads, length):
    """A raw client that asks for `reads` reads of `length` bytes (simple
    replies: data on the wire) and never reads a reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw = it.RawClient.__new__(it.RawClient)
    raw.sock, raw.next_handle = s, 1
    raw.greeting()
    raw.go("m")
    for i in range(reads):
        raw.request(it.CMD_READ, offset=0, length=length)
    return raw


def hung_up(sock):
    """The server closed its end (seen without reading what it sent)."""
    p = select.poll()
    p.register(sock, select.POLLHUP | select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP) for _, ev in p.poll(0))


def test_slow_readers_stay_under_the_memory_cap_and_are_disconnected():
    cap = 256 * MiB
    with server("--max-request-memory", "256M", "--send-timeout", "2") as srv:
        # Memory of the RAM disk is touched first, so that RSS shows requests only.
        h = connect(srv)
        h.pwrite(b"\x5a" * (32 * MiB), 0)
        base = it.rss_bytes(srv.pid)
        attackers = [slow_reader(srv.socket_path, 8, 32 * MiB) for _ in range(6)]
        time.sleep(1.5)
        peak = it.rss_bytes(srv.pid) - base
        # Each would hold 96 MiB (576 MiB in all) without the global cap.
        assert peak <= cap + 64 * MiB, f"{peak / MiB:.0f} MiB held with --max-request-memory 256M"
        # An honest client with a few requests in flight goes on meanwhile.
        start = time.monotonic()
        for _ in range(50):
            assert h.pread(4096, 4096) == b"\x5a" * 4096
        assert time.monotonic() - start < 5
        # Past the send timeout they are closed (a wave at a time: those
        # that waited for memory get it, then time out too), and their
        # memory is freed. Reading would be progress: look for the hang-up.
        eventually(lambda: all(hung_up(raw.sock) for raw in attackers), 40, "slow readers disconnected")
        eventually(lambda: it.rss_bytes(srv.pid) - base < 64 * MiB, 10, "memory of the slow readers freed")
        for raw in attackers:
            raw.close()
        h.pread(4096, 0)
        h.shutdown()
        logs = srv.logs()
        assert "replies unread for --send-timeout" in logs
        assert "request memory at its cap" in logs
        limits = status_limits(srv)
        assert limits["slow_readers_closed"] == 6 and limits["memory_waits"] >= 1, limits
        assert limits["request_memory_peak_bytes"] <= cap + 32 * MiB, limits


def test_stop_does_not_wait_for_a_slow_reader_past_the_send_timeout():
    srv = server("--send-timeout", "2").start()
    raw = slow_reader(srv.socket_path, 3, 32 * MiB)
    time.sleep(0.5)
    start = time.monotonic()
    srv.signal(it.signal.SIGTERM)
    assert srv.wait(timeout=20) == 0
    took = time.monotonic() - start
    assert took < 6, f"stopped after {took:.1f} s (--send-timeout 2; the grace period is 30 s)"
    raw.close()


def test_memory_export_size_cap():
    def start(*args):
        r = subprocess.run([it.IOBANDD, "--state-dir", it.make_tmpdir(), *args],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, r.stderr

    code, err = start("--export", "big=,backend=memory,size=1T")
    assert code == 2 and "--max-memory-export" in err and "big" in err, err
    code, err = start("--max-memory-export", "64M", "--export", "m=,backend=memory,size=65M")
    assert code == 2 and "64 MiB" in err, err
    # At the cap it starts.
    with server("--max-memory-export", "64M", exports=("m=,backend=memory,size=64M",)) as srv:
        h = connect(srv)
        assert h.get_size() == 64 * MiB
        h.shutdown()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
