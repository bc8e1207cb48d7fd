#!/usr/bin/python3
"""The NBD handshake against iobandd: NBD_OPT_LIST, NBD_OPT_INFO, NBD_OPT_GO
(libnbd in option mode), NBD_OPT_EXPORT_NAME (old-style clients, with and
without the 124 zero bytes), unknown options answered NBD_REP_ERR_UNSUP,
what NBD_INFO_BLOCK_SIZE says; and hostile clients: thousands of options,
options with huge lengths, bad client flags, garbage after the handshake.
Each of those loses its own connection only: the daemon keeps serving.

Spec references are to doc/proto.md of NetworkBlockDevice/nbd."""

import os
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
ADVERTISED = (it.TFLAG_HAS_FLAGS | it.TFLAG_SEND_FLUSH | it.TFLAG_SEND_FUA | it.TFLAG_SEND_TRIM
              | it.TFLAG_SEND_WRITE_ZEROES | it.TFLAG_SEND_FAST_ZERO | it.TFLAG_SEND_CACHE
              | it.TFLAG_CAN_MULTI_CONN)


@pytest.fixture(scope="module")
def server():
    d = it.make_tmpdir()
    it.random_file(os.path.join(d, "ro.img"), 4 * MiB, seed=3)
    exports = [
        "ram=,backend=memory,size=16M,description=scratch space",
        "other=,backend=memory,size=8M",
        f"ro={d}/ro.img,readonly",
    ]
    with it.Server(exports, tmpdir=d) as s:
        yield s
        s.assert_alive()


watchdog = it.pytest_watchdog()


def serves(server, name="ram"):
    """The daemon is alive and a new client can read and write."""
    server.assert_alive()
    h = server.connect(name)
    data = os.urandom(4096)
    h.pwrite(data, 8192)
    assert h.pread(4096, 8192) == data
    h.shutdown()


def option_mode(server, name="ram", **kw):
    return server.connect(name, opt_mode=True, **kw)


# --- well-behaved clients ------------------------------------------------------

def test_opt_list(server):
    h = option_mode(server)
    listed = []
    n = h.opt_list(lambda name, description: listed.append((name, description)))
    assert n == len(listed)
    names = {name for name, _ in listed}
    expected = set(server.names()) if server.peer == "iobandd" else {"ram"}
    assert expected <= names, f"NBD_OPT_LIST gave {sorted(names)}, expected {sorted(expected)}"
    # Still negotiating (a server may refuse a second list: not tested).
    h.opt_info()
    assert h.get_size() == 16 * MiB
    h.opt_go()
    assert h.aio_is_ready()
    h.shutdown()


def test_opt_info_then_go(server):
    h = option_mode(server)
    h.set_full_info(True)
    h.opt_info()
    assert h.get_size() == 16 * MiB
    assert not h.is_read_only()
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == it.MAX_PAYLOAD
    assert h.get_export_description() == "scratch space"
    assert h.get_canonical_export_name() == "ram"
    # Info about another export, then an unknown one: errors keep negotiation going.
    if server.peer == "iobandd":
        h.set_export_name("ro")
        h.opt_info()
        assert h.is_read_only() and h.get_size() == 4 * MiB
    h.set_export_name("nosuch")
    with pytest.raises(nbd.Error):
        h.opt_info()
    assert h.aio_is_negotiating()
    with pytest.raises(nbd.Error):
        h.opt_go()
    assert h.aio_is_negotiating(), "NBD_OPT_GO of an unknown export ended the negotiation"
    h.set_export_name("ram")
    h.opt_go()
    assert h.get_size() == 16 * MiB
    assert h.pread(4096, 0) is not None
    h.shutdown()


def test_opt_go_readonly(server):
    h = option_mode(server, "ro")
    h.opt_go()
    assert h.is_read_only()
    assert h.get_size() == 4 * MiB
    h.shutdown()


def test_meta_contexts(server):
    h = option_mode(server, meta=())
    listed = []
    h.opt_list_meta_context(lambda name: listed.append(name))
    assert "base:allocation" in listed, f"NBD_OPT_LIST_META_CONTEXT gave {listed}"
    # Unknown contexts are left out; base:allocation is selected.
    h.add_meta_context("x-nosuch:thing")
    h.add_meta_context("base:allocation")
    h.add_meta_context("qemu:dirty-bitmap:none")
    h.opt_go()
    assert h.can_meta_context("base:allocation")
    assert not h.can_meta_context("x-nosuch:thing")
    assert not h.can_meta_context("qemu:dirty-bitmap:none")
    seen = []
    h.block_status(65536, 0, lambda ctx, off, entries, err: seen.append(ctx) or 0)
    assert seen == ["base:allocation"], f"block status contexts {seen}"
    h.shutdown()


@pytest.mark.parametrize("flags", [0, nbd.HANDSHAKE_FLAG_NO_ZEROES, nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE])
def test_old_style_clients(server, flags):
    """Clients without NBD_OPT_GO: non-fixed newstyle (only
    NBD_OPT_EXPORT_NAME), or fixed newstyle without structured replies."""
    h = nbd.NBD()
    h.set_handshake_flags(flags)
    h.set_request_structured_replies(False)
    h.set_export_name("ram")
    h.connect_unix(server.sock("ram"))
    assert h.get_size() == 16 * MiB
    assert not h.get_structured_replies_negotiated()
    data = os.urandom(65536)
    h.pwrite(data, MiB)
    assert h.pread(65536, MiB) == data
    h.shutdown()


# --- raw handshakes -------------------------------------------------------------

def test_raw_greeting_and_export_name(server):
    for client_flags in (it.FLAG_C_FIXED_NEWSTYLE | it.FLAG_C_NO_ZEROES, it.FLAG_C_FIXED_NEWSTYLE, 0):
        with server.raw("ram") as c:
            hflags = c.greeting(client_flags)
            assert hflags & it.FLAG_FIXED_NEWSTYLE, f"handshake flags {hflags:#x}"
            assert hflags & it.FLAG_NO_ZEROES, f"handshake flags {hflags:#x}"
            size, tflags = c.export_name("ram", no_zeroes=bool(client_flags & it.FLAG_C_NO_ZEROES))
            assert size == 16 * MiB
            assert tflags & ADVERTISED == ADVERTISED, (
                f"transmission flags {tflags:#x} lack {ADVERTISED & ~tflags:#x}")
            assert not tflags & it.TFLAG_READ_ONLY
            # The stream is in step: a write and a read (simple replies).
            assert c.call(it.CMD_WRITE, 100, 3, payload=b"abc")[0] == 0
            assert c.call(it.CMD_READ, 100, 3) == (0, b"abc")
            c.request(it.CMD_DISC)
    with server.raw("ro") as c:
        c.greeting()
        _, tflags = c.export_name("ro")
        assert tflags & it.TFLAG_READ_ONLY, f"readonly export's flags {tflags:#x}"
        assert tflags & it.TFLAG_HAS_FLAGS
        c.request(it.CMD_DISC)


def test_raw_export_name_unknown(server):
    """Spec: if the export does not exist the server MUST terminate the session."""
    with server.raw("ram") as c:
        c.greeting()
        c.send_option(it.OPT_EXPORT_NAME, b"nosuch")
        c.wait_closed(timeout=30)
    serves(server)


def test_raw_unknown_options(server):
    with server.raw("ram") as c:
        c.greeting()
        for option in (0x1234, 0xFFFFFFFF, 4, 0x7FFF0000):  # 4: the withdrawn PEEK_EXPORT
            c.send_option(option, b"some data" if option & 1 else b"")
            opt, reply, data = c.option_reply()
            assert opt == option, f"reply names option {opt:#x}, expected {option:#x}"
            assert reply == it.REP_ERR_UNSUP, f"option {option:#x}: {it.reply_name(reply)}"
        # Negotiation goes on.
        names = c.list_exports()
        assert "ram" in names
        size, tflags, infos = c.go("ram")
        assert size == 16 * MiB
        assert c.call(it.CMD_READ, 0, 512)[0] == 0
        c.request(it.CMD_DISC)


def test_raw_opt_list_with_data(server):
    """Spec: for NBD_OPT_LIST "the server SHOULD reject a request that
    includes data with NBD_REP_ERR_INVALID"."""
    with server.raw("ram") as c:
        c.greeting()
        c.send_option(it.OPT_LIST, b"junk")
        _, reply, _ = c.option_reply()
        assert reply == it.REP_ERR_INVALID, it.reply_name(reply)
        assert "ram" in c.list_exports()


def test_raw_info_replies(server):
    with server.raw("ram") as c:
        c.greeting()
        infos = c.info_or_go(it.OPT_INFO, "ram", [it.INFO_BLOCK_SIZE, it.INFO_NAME,
                                                  it.INFO_DESCRIPTION])
        size, tflags = struct.unpack(">QH", infos[it.INFO_EXPORT])
        assert size == 16 * MiB
        assert it.INFO_BLOCK_SIZE in infos, "NBD_INFO_BLOCK_SIZE asked for and not given"
        assert struct.unpack(">LLL", infos[it.INFO_BLOCK_SIZE]) == (1, 4096, it.MAX_PAYLOAD)
        if it.INFO_DESCRIPTION in infos:
            assert infos[it.INFO_DESCRIPTION] == b"scratch space"
        # NBD_OPT_INFO of an unknown export: NBD_REP_ERR_UNKNOWN, and go on.
        with pytest.raises(it.OptionError) as e:
            c.info_or_go(it.OPT_INFO, "nosuch")
        assert e.value.reply_type == it.REP_ERR_UNKNOWN, it.reply_name(e.value.reply_type)
        other = "other" if server.peer == "iobandd" else "ram"
        size, _, _ = c.go(other)
        assert size == (8 if other == "other" else 16) * MiB
        c.request(it.CMD_DISC)


def test_raw_abort(server):
    with server.raw("ram") as c:
        c.greeting()
        c.send_option(it.OPT_ABORT)
        try:
            opt, reply, _ = c.option_reply()
            assert (opt, reply) == (it.OPT_ABORT, it.REP_ACK)
        except EOFError:
            pass  # spec: a client SHOULD handle the server closing without a reply
        c.wait_closed(timeout=30)
    serves(server)


# --- hostile clients: their connection goes, the daemon stays -----------------

def test_bad_client_flags(server):
    """Spec: "the server MUST close the TCP connection if it does not
    recognize the client's flags"."""
    with server.raw("ram") as c:
        c.greeting(client_flags=it.FLAG_C_FIXED_NEWSTYLE | (1 << 17))
        c.wait_closed(timeout=30)
    with server.raw("ram") as c:  # not NBD at all
        c.recv_exact(18)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        c.wait_closed(timeout=30)
    serves(server)


def test_thousands_of_options(server):
    """A client that never stops sending options is cut off (the handshake
    is bounded); replies are read meanwhile so nothing blocks."""
    with server.raw("ram") as c:
        c.greeting()
        eof = threading.Event()

        def reader():
            try:
                c.wait_closed(timeout=120)
                eof.set()
            except (TimeoutError, OSError):
                pass
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        batch = b"".join(struct.pack(">QLL", it.IHAVEOPT, 0xBAD0 + i, 0) for i in range(100))
        sent = 0
        try:
            while sent < 20000 and not eof.is_set():
                c.sock.sendall(batch)
                sent += 100
        except OSError:
            pass
        t.join(timeout=120)
        it.log(f"sent {sent} options before the server closed the connection")
        assert eof.is_set(), f"the server took {sent} options without closing the connection"
    serves(server)


@pytest.mark.parametrize("option,length", [
    (it.OPT_GO, 0xFFFFFFFF),
    (it.OPT_INFO, 0x80000000),
    (it.OPT_EXPORT_NAME, 0xFFFFFFF0),
    (0xBEEF, 0x7FFFFFFF),
    (it.OPT_LIST, 0x40000000),
])
def test_huge_option_length(server, option, length):
    """An option that claims gigabytes: the server does not wait for them
    (nor allocate them); it closes the connection, maybe after an error."""
    with server.raw("ram") as c:
        c.greeting()
        c.send_option(option, b"\0\0\0\3ram" + bytes(64), length=length)
        got = c.wait_closed(timeout=30)
        # Whatever came back is option error replies.
        while len(got) >= 20:
            magic, opt, reply, n = struct.unpack(">QLLL", got[:20])
            assert magic == it.OPTION_REPLY_MAGIC and reply & it.REP_FLAG_ERROR, (
                f"reply {it.reply_name(reply)} to a {length}-byte option")
            got = got[20 + n:]
    serves(server)


def test_overlong_export_name(server):
    """Spec: strings MUST be no longer than 4096 bytes. A 64 KiB name in a
    fully sent NBD_OPT_GO: an error reply (then negotiation goes on) or a
    closed connection."""
    with server.raw("ram") as c:
        c.greeting()
        name = b"n" * 65536
        data = struct.pack(">L", len(name)) + name + struct.pack(">H", 0)
        try:
            c.send_option(it.OPT_GO, data)
            opt, reply, _ = c.option_reply()
            assert reply & it.REP_FLAG_ERROR, f"a 64 KiB export name got {it.reply_name(reply)}"
            size, _, _ = c.go("ram")
            assert size == 16 * MiB
        except (EOFError, ConnectionResetError, BrokenPipeError):
            pass  # closed (maybe before taking all the data)
    serves(server)


def test_garbage_after_handshake(server):
    """A broken stream in transmission closes that connection only."""
    other = server.connect("other")
    other.pwrite(b"\x42" * 4096, 0)
    for garbage in (os.urandom(28), b"\0" * 28, struct.pack(">L", 0x12345678) + bytes(4000)):
        with server.raw("ram") as c:
            c.greeting()
            c.go("ram")
            assert c.call(it.CMD_READ, 0, 512)[0] == 0
            c.send(garbage)
            got = c.wait_closed(timeout=30)
            assert len(got) <= 4096, f"{len(got)} bytes in answer to garbage"
        assert other.pread(4096, 0) == b"\x42" * 4096, "another connection was hurt"
    # Truncated request, then hang up.
    with server.raw("ram") as c:
        c.greeting()
        c.go("ram")
        c.send(struct.pack(">LHH", it.REQUEST_MAGIC, 0, it.CMD_WRITE))
    # Hang up in the middle of the handshake.
    for step in range(3):
        c = server.raw("ram")
        if step >= 1:
            c.greeting()
        if step >= 2:
            c.send(struct.pack(">QL", it.IHAVEOPT, it.OPT_GO))
        c.close()
    time.sleep(0.2)
    assert other.pread(4096, 0) == b"\x42" * 4096
    other.shutdown()
    serves(server)


if __name__ == "__main__":
    sys.exit(it.run(__file__))
