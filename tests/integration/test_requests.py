#!/usr/bin/python3
"""NBD requests against iobandd with libnbd (what nbdsh runs), with libnbd's
client-side checks off (set_strict_mode(0)) so that bad requests reach the
server: every error case answered with the NBD error the spec asks for and
the connection going on; block status of a sparse image; TRIM, FUA,
WRITE_ZEROES with NO_HOLE and FAST_ZERO, CACHE, FLUSH; structured reads of
a sparse image; many requests in flight on one connection; and raw-socket
requests libnbd cannot send (unknown command, oversized write payload).

Spec references are to doc/proto.md of NetworkBlockDevice/nbd."""

import errno
import fcntl
import os
import random
import struct
import sys
import termios
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
SIZE = 64 * MiB
BOTH = ["ram", "disk"]

# Regions of each export, one per test, so tests do not see each other's data.
R_ERRORS = 0
R_FUA = 1 * MiB
R_CACHE = 2 * MiB
R_STATUS = 4 * MiB
R_TRIM = 8 * MiB
R_ZERO = 12 * MiB
R_STRUCTURED = 16 * MiB
R_PIPELINE = 24 * MiB
R_BACKLOG = 28 * MiB
R_BIG = 32 * MiB  # to the end; oversized requests start at 32 MiB - 4 KiB


@pytest.fixture(scope="module")
def server():
    d = it.make_tmpdir()
    it.sparse_file(os.path.join(d, "disk.img"), SIZE)
    it.random_file(os.path.join(d, "ro.img"), 8 * MiB, seed=7)
    exports = [
        "ram=,backend=memory,size=64M",
        f"disk={d}/disk.img",
        f"ro={d}/ro.img,readonly",
    ]
    with it.Server(exports, tmpdir=d) as s:
        yield s
        s.assert_alive()


@pytest.fixture
def connect(server):
    """connect(name, **options) -> libnbd handle, closed after the test."""
    handles = []

    def make(name, **kw):
        kw.setdefault("strict", False)
        h = server.connect(name, **kw)
        handles.append(h)
        return h
    yield make
    for h in handles:
        try:
            if not h.aio_is_dead() and not h.aio_is_closed():
                h.shutdown()
        except nbd.Error:
            pass


watchdog = it.pytest_watchdog()


def still_works(h, offset=R_ERRORS):
    """The connection goes on: a good write and read on the same handle."""
    assert not h.aio_is_dead(), "the server closed the connection"
    data = os.urandom(4096)
    h.pwrite(data, offset + 8192)
    assert h.pread(4096, offset + 8192) == data


def extents(h, count, offset, flags=0):
    """base:allocation extents as [(start, length, flags)]."""
    got = []

    def cb(metacontext, off, entries, err):
        if metacontext == "base:allocation":
            got.append((off, list(entries)))
        return 0
    h.block_status(count, offset, cb, flags)
    assert len(got) == 1, f"{len(got)} base:allocation chunks in one reply"
    start, entries = got[0]
    out = []
    pos = offset
    for length, state in zip(entries[0::2], entries[1::2]):
        assert length > 0, f"zero-length extent in {entries}"
        out.append((pos, length, state))
        pos += length
    return out


def state_at(exts, offset):
    for start, length, state in exts:
        if start <= offset < start + length:
            return state
    raise AssertionError(f"offset {offset} not covered by extents {exts}")


# --- errors, each followed by a good request on the same connection ----------

@pytest.mark.parametrize("name", BOTH)
def test_read_out_of_range(connect, name):
    h = connect(name)
    # Spec: "SHOULD return NBD_EINVAL if it receives a read ... beyond the
    # size of the device".
    for count, offset in [(4096, SIZE - 2048), (512, SIZE), (1, SIZE + (1 << 40)),
                          (4096, (1 << 64) - 2048)]:
        it.expect_error(lambda: h.pread(count, offset), errno.EINVAL,
                        what=f"read {count}@{offset}")
        still_works(h)
    # The last bytes are readable.
    assert len(h.pread(4096, SIZE - 4096)) == 4096


@pytest.mark.parametrize("name", BOTH)
def test_write_out_of_range(connect, name):
    h = connect(name)
    before = os.urandom(4096)
    h.pwrite(before, SIZE - 4096)
    # Spec: writes beyond the end SHOULD get NBD_ENOSPC (error values
    # section) / NBD_EINVAL (block size section): either.
    for count, offset in [(8192, SIZE - 4096), (1, SIZE), (4096, SIZE + (1 << 40))]:
        it.expect_error(lambda: h.pwrite(b"\xee" * count, offset), errno.ENOSPC, errno.EINVAL,
                        what=f"write {count}@{offset}")
        still_works(h)
    assert h.pread(4096, SIZE - 4096) == before, "a rejected write changed the last block"


@pytest.mark.parametrize("name", BOTH)
def test_trim_zero_cache_status_out_of_range(connect, name):
    h = connect(name)
    it.expect_error(lambda: h.trim(8192, SIZE - 4096), errno.EINVAL, what="trim past the end")
    still_works(h)
    it.expect_error(lambda: h.zero(8192, SIZE - 4096), errno.ENOSPC, errno.EINVAL,
                    what="write zeroes past the end")
    still_works(h)
    it.expect_error(lambda: h.cache(8192, SIZE - 4096), errno.EINVAL, what="cache past the end")
    still_works(h)
    it.expect_error(lambda: extents(h, 4096, SIZE), errno.EINVAL, what="block status at the end")
    still_works(h)


@pytest.mark.parametrize("name", BOTH)
def test_oversized_read(connect, name):
    # Contract: max block size 32 MiB, larger requests rejected with EINVAL.
    for structured in (True, False):
        h = connect(name, structured=structured)
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == it.MAX_PAYLOAD
        assert len(h.pread(it.MAX_PAYLOAD, R_BIG)) == it.MAX_PAYLOAD
        it.expect_error(lambda: h.pread(it.MAX_PAYLOAD + 4096, 0), errno.EINVAL,
                        what=f"read of 32 MiB + 4 KiB (structured={structured})")
        still_works(h)


@pytest.mark.parametrize("name", BOTH)
def test_oversized_write(connect, server, name):
    h = connect(name)
    data = it.pattern(1, it.MAX_PAYLOAD)
    h.pwrite(data, R_BIG)  # exactly the maximum: fine
    h.flush()
    assert h.pread(it.MAX_PAYLOAD, R_BIG) == data
    # Over the maximum: the server reads and drops the payload and answers
    # EINVAL, or (spec: a payload it deems too large) closes the connection.
    # Either way nothing is written.
    try:
        h.pwrite(b"\x55" * (it.MAX_PAYLOAD + 4096), R_BIG - 4096)
        raise AssertionError("a write of 32 MiB + 4 KiB succeeded")
    except nbd.Error as e:
        if h.aio_is_dead() or h.aio_is_closed():
            it.log(f"oversized write: connection closed ({e})")
            h = connect(name)
        else:
            assert e.errnum == errno.EINVAL, f"oversized write: {e}"
            still_works(h)
    assert h.pread(4096, R_BIG - 4096) != b"\x55" * 4096, "the rejected oversized write wrote"
    assert h.pread(it.MAX_PAYLOAD, R_BIG) == data, "the rejected oversized write wrote"
    server.assert_alive()


@pytest.mark.parametrize("name", BOTH)
def test_oversized_trim_zero_cache(connect, name):
    # Spec: for commands without payload "the server SHOULD NOT disconnect,
    # but MAY reply with an NBD_EOVERFLOW or NBD_EINVAL error"; success is fine.
    h = connect(name)
    big = it.MAX_PAYLOAD + 4096
    off = SIZE - big  # the end of the export: other tests' regions stay as they are
    for what, fn in [("trim", lambda: h.trim(big, off)),
                     ("write zeroes", lambda: h.zero(big, off)),
                     ("cache", lambda: h.cache(big, off)),
                     ("block status", lambda: extents(h, big, off))]:
        try:
            fn()
        except nbd.Error as e:
            assert e.errnum in (errno.EINVAL, errno.EOVERFLOW), f"oversized {what}: {e}"
        still_works(h)


@pytest.mark.parametrize("name", BOTH)
def test_unknown_and_misplaced_flags(connect, name):
    h = connect(name)
    # Spec: "SHOULD return NBD_EINVAL if it receives an unknown command flag
    # ... or a flag not explicitly documented as applicable".
    cases = [
        ("read with an unknown flag", lambda: h.pread(4096, 0, flags=1 << 9)),
        ("write with an unknown flag", lambda: h.pwrite(b"x" * 512, 0, flags=1 << 12)),
        ("read with NO_HOLE", lambda: h.pread(4096, 0, flags=nbd.CMD_FLAG_NO_HOLE)),
        ("write with REQ_ONE", lambda: h.pwrite(b"x" * 512, 0, flags=nbd.CMD_FLAG_REQ_ONE)),
        ("write with DF", lambda: h.pwrite(b"x" * 512, 0, flags=nbd.CMD_FLAG_DF)),
        ("trim with FAST_ZERO", lambda: h.trim(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO)),
        ("flush with an unknown flag", lambda: h.flush(flags=1 << 15)),
        ("cache with NO_HOLE", lambda: h.cache(4096, 0, flags=nbd.CMD_FLAG_NO_HOLE)),
    ]
    for what, fn in cases:
        it.expect_error(fn, errno.EINVAL, what=what)
        still_works(h)
    # Spec: FUA "is valid for all commands ... the server MUST accept all
    # commands with this bit set (even by ignoring the bit)".
    assert len(h.pread(4096, 0, flags=nbd.CMD_FLAG_FUA)) == 4096
    h.flush(flags=nbd.CMD_FLAG_FUA)
    h.cache(4096, 0, flags=nbd.CMD_FLAG_FUA)
    still_works(h)


def test_readonly_export_refuses_writes(connect, server):
    h = connect("ro")
    assert h.is_read_only()
    with open(os.path.join(server.dir, "ro.img"), "rb") as f:
        original = f.read(64 * 1024)
    # Spec: "SHOULD return NBD_EPERM if it receives a write or trim request
    # on a read-only export", and the same for write zeroes.
    cases = [
        ("write", lambda: h.pwrite(b"\xff" * 4096, 0)),
        ("FUA write", lambda: h.pwrite(b"\xff" * 4096, 4096, flags=nbd.CMD_FLAG_FUA)),
        ("trim", lambda: h.trim(65536, 0)),
        ("write zeroes", lambda: h.zero(65536, 0)),
        ("write zeroes NO_HOLE", lambda: h.zero(65536, 0, flags=nbd.CMD_FLAG_NO_HOLE)),
    ]
    for what, fn in cases:
        it.expect_error(fn, errno.EPERM, what=f"{what} on a readonly export")
        assert not h.aio_is_dead(), f"connection closed after {what} on a readonly export"
        assert h.pread(64 * 1024, 0) == original, f"{what} changed a readonly export"
    with open(os.path.join(server.dir, "ro.img"), "rb") as f:
        assert f.read(64 * 1024) == original, "the readonly export's file changed"


@pytest.mark.parametrize("name", BOTH)
def test_zero_length_requests(connect, name):
    # Spec: behaviour unspecified "although the server SHOULD NOT disconnect".
    h = connect(name)
    for what, fn in [("read", lambda: h.pread(0, 4096)),
                     ("write", lambda: h.pwrite(b"", 4096)),
                     ("trim", lambda: h.trim(0, 4096)),
                     ("write zeroes", lambda: h.zero(0, 4096))]:
        try:
            fn()
        except nbd.Error as e:
            it.log(f"zero-length {what}: {e}")
        still_works(h)


@pytest.mark.parametrize("name", BOTH)
def test_block_status_without_meta_context(connect, name):
    # Spec: "Servers SHOULD reply with NBD_EINVAL to clients sending
    # NBD_CMD_BLOCK_STATUS without selecting at least one metadata context".
    h = connect(name, meta=())
    assert not h.can_meta_context("base:allocation")
    it.expect_error(lambda: h.block_status(4096, 0, lambda *a: 0), errno.EINVAL,
                    what="block status without a meta context")
    still_works(h)


# --- block status, trim, zero, FUA, cache, flush --------------------------------

@pytest.mark.parametrize("name", BOTH)
def test_block_status_sparse(connect, name):
    h = connect(name)
    assert h.can_meta_context("base:allocation")
    region = R_STATUS  # 4 MiB never written before this test
    exts = extents(h, 4 * MiB, region)
    assert exts[0][0] == region
    for start, length, state in exts:
        if start < region + 4 * MiB:
            assert state == nbd.STATE_HOLE | nbd.STATE_ZERO, (
                f"unwritten {start}+{length} reported as {state}, expected hole|zero: {exts}")
    h.pwrite(os.urandom(64 * 1024), region + MiB)
    h.flush()
    exts = extents(h, 4 * MiB, region)
    covered = exts[-1][0] + exts[-1][1] - region
    assert covered > 0 and exts[0][0] == region, exts
    assert state_at(exts, region) == 3, f"the hole before the data is gone: {exts}"
    for off in range(region + MiB, region + MiB + 64 * 1024, 4096):
        if off < region + covered:
            assert state_at(exts, off) & nbd.STATE_HOLE == 0, (
                f"written data at {off} reported as a hole: {exts}")
    # The reply may stop early (count is a hint); ask again from 2 MiB on.
    exts = extents(h, 2 * MiB, region + 2 * MiB)
    assert state_at(exts, region + 2 * MiB) == 3, f"the hole after the data is gone: {exts}"
    # REQ_ONE: exactly one extent, no longer than asked.
    one = extents(h, 8192, region + MiB, flags=nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and one[0][1] <= 8192, f"REQ_ONE reply: {one}"
    assert one[0][2] & nbd.STATE_HOLE == 0
    one = extents(h, MiB, region, flags=nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and one[0][1] <= MiB and one[0][2] == 3, f"REQ_ONE reply: {one}"


@pytest.mark.parametrize("name", BOTH)
def test_trim_then_read_zeroes(connect, name):
    h = connect(name)
    h.pwrite(os.urandom(4 * MiB), R_TRIM)
    h.flush()
    h.trim(2 * MiB, R_TRIM + MiB)
    assert h.pread(2 * MiB, R_TRIM + MiB) == bytes(2 * MiB), "trimmed range does not read as zeroes"
    # With FUA too; unaligned.
    h.trim(5000, R_TRIM + 100, flags=nbd.CMD_FLAG_FUA)
    assert h.pread(5000, R_TRIM + 100) == bytes(5000)
    still_works(h)


@pytest.mark.parametrize("name", BOTH)
def test_fua_write(connect, name):
    h = connect(name)
    data = os.urandom(3 * 4096 + 17)
    h.pwrite(data, R_FUA + 333, flags=nbd.CMD_FLAG_FUA)
    assert h.pread(len(data), R_FUA + 333) == data
    h.zero(4096, R_FUA + 65536, flags=nbd.CMD_FLAG_FUA)
    assert h.pread(4096, R_FUA + 65536) == bytes(4096)
    h.flush()
    # Another connection sees it (multi-conn: writes acknowledged are visible).
    h2 = connect(name)
    assert h2.can_multi_conn()
    assert h2.pread(len(data), R_FUA + 333) == data


@pytest.mark.parametrize("name", BOTH)
def test_write_zeroes(connect, name, server):
    h = connect(name)
    base = R_ZERO
    data = os.urandom(4 * MiB)
    h.pwrite(data, base)
    h.flush()
    expect = bytearray(data)

    # Plain, unaligned: exactly the range, neighbours kept.
    h.zero(1000, base + 4095)
    expect[4095:5095] = bytes(1000)
    # NO_HOLE: spec "the area MUST be fully provisioned": the file keeps its
    # blocks. (Not asked of block status: file systems report zeroed,
    # allocated extents as holes.)
    img = os.path.join(server.dir, "disk.img")
    allocated = os.stat(img).st_blocks
    h.zero(MiB, base + MiB, flags=nbd.CMD_FLAG_NO_HOLE)
    h.flush()
    expect[MiB:2 * MiB] = bytes(MiB)
    if name == "disk":
        after = os.stat(img).st_blocks
        assert after >= allocated, (
            f"write zeroes with NO_HOLE deallocated {(allocated - after) * 512} bytes of disk.img")
    # FAST_ZERO: succeed, or fail quickly with ENOTSUP without changing anything.
    for i, flags in enumerate([nbd.CMD_FLAG_FAST_ZERO,
                               nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE]):
        off = 2 * MiB + i * MiB
        try:
            h.zero(MiB, base + off, flags=flags)
            expect[off:off + MiB] = bytes(MiB)
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP, f"fast zero failed with {e}, expected ENOTSUP"
    assert h.pread(4 * MiB, base) == bytes(expect), "write zeroes did not zero exactly its range"
    # The backing file holds the same.
    h.flush()
    if name == "disk":
        with open(os.path.join(server.dir, "disk.img"), "rb") as f:
            f.seek(base)
            assert f.read(4 * MiB) == bytes(expect), "disk.img differs after write zeroes"


@pytest.mark.parametrize("name", BOTH)
def test_cache_and_flush(connect, name):
    h = connect(name)
    assert h.can_cache() and h.can_flush()
    h.cache(MiB, R_CACHE)
    h.cache(it.MAX_PAYLOAD, 0)
    h.cache(1, SIZE - 1)
    h.flush()
    data = os.urandom(4096)
    h.pwrite(data, R_CACHE + 5)
    h.cache(4096, R_CACHE)
    assert h.pread(4096, R_CACHE + 5) == data


@pytest.mark.parametrize("name", BOTH)
def test_structured_read_of_sparse_region(connect, name):
    h = connect(name)
    assert h.get_structured_replies_negotiated()
    base, count = R_STRUCTURED, 8 * MiB
    expect = bytearray(count)
    for off, n in [(MiB + 100, 4096), (4 * MiB, 64 * 1024), (8 * MiB - 1, 1)]:
        data = os.urandom(n)
        h.pwrite(data, base + off)
        expect[off:off + n] = data
    h.flush()

    chunks = []

    def cb(subbuf, offset, status, err):
        chunks.append((offset, len(subbuf), status, bytes(subbuf)))
        return 0
    buf = h.pread_structured(count, base, cb)
    assert buf == bytes(expect), "structured read returned wrong data"
    # Chunks cover the request exactly once; holes read as zeroes.
    chunks.sort()
    pos = base
    for offset, n, status, data in chunks:
        assert status in (nbd.READ_DATA, nbd.READ_HOLE), f"chunk status {status}"
        assert offset == pos, f"chunk at {offset}, expected {pos} (gap or overlap): {chunks[:8]}"
        assert n > 0, "empty chunk"
        assert data == bytes(expect[offset - base:offset - base + n])
        pos += n
    assert pos == base + count, f"chunks end at {pos}, expected {base + count}"
    kinds = sorted({status for _, _, status, _ in chunks})
    it.log(f"{name}: {len(chunks)} chunks, statuses {kinds}")

    # The same over simple replies.
    h2 = connect(name, structured=False)
    assert not h2.get_structured_replies_negotiated()
    assert h2.pread(count, base) == bytes(expect)
    # A structured read that fails reports an error, not data.
    it.expect_error(lambda: h.pread_structured(8192, SIZE - 4096, lambda *a: 0), errno.EINVAL,
                    what="structured read past the end")
    still_works(h)


@pytest.mark.parametrize("name", BOTH)
def test_many_requests_in_flight(connect, name):
    """256 writes and reads in flight on one connection; replies may come in
    any order; each is matched to its request by handle."""
    h = connect(name)
    rng = random.Random(5)
    blocks = list(range(256))
    rng.shuffle(blocks)
    want = {b: it.pattern(1000 + b, 16 * 1024) for b in blocks}
    cookies = [h.aio_pwrite(want[b], R_PIPELINE + b * 16 * 1024) for b in blocks]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
    bufs = {b: nbd.Buffer(16 * 1024) for b in blocks}
    cookies = [h.aio_pread(bufs[b], R_PIPELINE + b * 16 * 1024) for b in blocks]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        assert h.aio_command_completed(c)
    for b in blocks:
        assert bufs[b].to_bytearray() == want[b], f"block {b} read back wrong"


# --- raw protocol: what libnbd will not send -----------------------------------

def raw_go(server, name="ram"):
    c = server.raw(name)
    c.greeting()
    size, flags, _ = c.go(name)
    assert size == SIZE
    return c


def test_raw_unknown_command(server):
    with raw_go(server) as c:
        # Spec: "SHOULD return NBD_EINVAL if it receives an unknown command".
        for cmd in (42, 0xFFFF):
            err, _ = c.call(cmd, 0, 4096)
            assert err == it.NBD_EINVAL, f"unknown command {cmd}: error {err}, expected EINVAL"
            err, data = c.call(it.CMD_READ, 0, 4096)
            assert err == 0 and len(data) == 4096
        # A read error over simple replies carries no data: the stream stays in step.
        err, _ = c.call(it.CMD_READ, SIZE, 4096)
        assert err == it.NBD_EINVAL
        err, _ = c.call(it.CMD_WRITE, 4096, 5, payload=b"hello")
        assert err == 0
        err, data = c.call(it.CMD_READ, 4096, 5)
        assert (err, data) == (0, b"hello")
        # Unknown flag bits via the raw socket too.
        err, _ = c.call(it.CMD_WRITE, 4096, 5, flags=1 << 15, payload=b"HELLO")
        assert err == it.NBD_EINVAL
        err, data = c.call(it.CMD_READ, 4096, 5)
        assert (err, data) == (0, b"hello"), "a write with a bad flag wrote"
        c.request(it.CMD_DISC)


@pytest.mark.parametrize("name", BOTH)
def test_replies_behind_an_unread_backlog(server, name):
    """A client that stops reading while replies pile up in its socket, sends
    more reads, then reads everything: every reply arrives, in step, with the
    right data. (On a Unix socket the server holds small replies back while
    the client has a backlog, and sends them when the client has read it down
    to a quarter of the socket's send buffer: without that wake-up the later
    replies would never come.)"""
    block = 4096
    blocks = 256
    with raw_go(server, name) as c:
        want = [it.pattern(3000 + b, block) for b in range(blocks)]
        for b in range(0, blocks, 64):
            assert c.call(it.CMD_WRITE, R_BACKLOG + b * block, 64 * block,
                          payload=b"".join(want[b:b + 64]))[0] == 0
        # Half the server's send buffer in replies, then more: well past the
        # quarter at which it starts to hold replies, well short of a full socket.
        with open("/proc/sys/net/core/wmem_default") as f:
            sndbuf = int(f.read())
        first = (sndbuf // 2) // (16 + block) + 1
        more = 16
        assert first + more <= blocks
        handles = {}
        for b in range(first):
            handles[c.request(it.CMD_READ, R_BACKLOG + b * block, block)] = b
        time.sleep(0.3)
        for b in range(first, first + more):
            handles[c.request(it.CMD_READ, R_BACKLOG + b * block, block)] = b
        time.sleep(0.3)
        waiting = struct.unpack("i", fcntl.ioctl(c.sock.fileno(), termios.FIONREAD, struct.pack("i", 0)))[0]
        it.log(f"{name}: {waiting} bytes waiting for the client, "
               f"{(first + more) * (16 + block)} bytes of replies in all")
        for _ in range(first + more):
            err, handle, data = c.simple_reply(block)
            assert err == 0, f"read of block {handles.get(handle)}: error {err}"
            assert handle in handles, f"a reply for handle {handle}, which was never sent or came twice"
            b = handles.pop(handle)
            assert data == want[b], f"block {b} read back wrong"
        assert not handles
        # The connection goes on as usual afterwards.
        err, data = c.call(it.CMD_READ, R_BACKLOG, block)
        assert (err, data) == (0, want[0])
        c.request(it.CMD_DISC)


def test_raw_oversized_write_payload(server):
    """A write of 64 MiB: the server answers EINVAL after dropping the payload,
    or closes the connection; nothing is written, the daemon goes on."""
    with raw_go(server) as c:
        marker = os.urandom(4096)
        assert c.call(it.CMD_WRITE, 0, 4096, payload=marker)[0] == 0
        length = 64 * MiB
        c.sock.sendall(struct.pack(">LHHQQL", it.REQUEST_MAGIC, 0, it.CMD_WRITE, 777, 0, length))
        sent = 0
        chunk = b"\x99" * MiB
        try:
            while sent < length:
                c.sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            it.log(f"oversized write: server closed the connection after {sent} bytes")
        if sent == length:
            try:
                err, handle, _ = c.simple_reply()
                assert handle == 777
                assert err == it.NBD_EINVAL, f"64 MiB write: error {err}, expected EINVAL"
                err, data = c.call(it.CMD_READ, 0, 4096)
                assert (err, data) == (0, marker), "the oversized write wrote"
            except (EOFError, ConnectionResetError):
                it.log("oversized write: server closed the connection after the payload")
    server.assert_alive()
    h = server.connect("ram")
    assert h.pread(4096, 0) == marker, "the oversized write wrote"
    h.shutdown()


def test_disk_file_matches_after_all(server, connect):
    """Last: the raw export's file holds what libnbd reads through the export."""
    h = connect("disk")
    h.flush()
    with open(os.path.join(server.dir, "disk.img"), "rb") as f:
        for off in range(0, SIZE, 8 * MiB):
            f.seek(off)
            assert f.read(8 * MiB) == h.pread(8 * MiB, off), f"disk.img differs at {off}+8M"


if __name__ == "__main__":
    sys.exit(it.run(__file__))
