#!/usr/bin/python3
"""NBD_OPT_STARTTLS on the wire, as doc/proto.md ("TLS support") has it,
with a raw client that upgrades its own socket (Python's ssl module, X.509
credentials made with certtool; over the Unix socket, which TLS serves as
well as TCP):

- --tls off: STARTTLS is answered NBD_REP_ERR_POLICY and the session goes
  on in clear.
- --tls require (FORCEDTLS): every option but STARTTLS and ABORT is
  answered NBD_REP_ERR_TLS_REQD; EXPORT_NAME, which cannot be refused,
  ends the session; STARTTLS with data is INVALID; after the ACK the
  handshake, then everything works under TLS; STARTTLS again is INVALID.
- --tls on (SELECTIVETLS): what was negotiated in clear (structured
  replies, meta contexts) is forgotten after the handshake.
- A client that sends garbage or hangs up instead of a TLS handshake loses
  its own connection only."""

import os
import ssl
import struct
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = it.MiB


@pytest.fixture(scope="module")
def creds():
    if it.PEER != "iobandd":
        it.skip("the TLS options are iobandd's")
    it.require_tools("certtool")
    d = it.make_tmpdir()
    subprocess.run(["bash", "-c", f'. "{HERE}/tls_creds.sh" && make_ca "$1/ca" "test CA" && '
                    'make_cert "$1/server" "$1/ca" server localhost', "-", d], check=True)
    return d


def start(creds, *args):
    d = it.make_tmpdir()
    with open(os.path.join(d, "disk.img"), "wb") as f:
        f.write(bytes(range(256)) * (4 * MiB // 256))
    return it.Server([f"disk={d}/disk.img"], args=list(args), tmpdir=d).start()


@pytest.fixture(scope="module")
def required(creds):
    s = start(creds, "--tls", "require", "--tls-certificates", f"{creds}/server")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def optional(creds):
    s = start(creds, "--tls", "on", "--tls-certificates", f"{creds}/server")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def off(creds):
    s = start(creds)
    yield s
    s.stop()


def option(c, opt, data=b""):
    c.send_option(opt, data)
    got, reply_type, payload = c.option_reply()
    assert got == opt, f"reply to option {got}, expected {opt}"
    return reply_type, payload


def upgrade(c, creds):
    """STARTTLS, its ACK, then the TLS handshake on the same socket."""
    assert option(c, it.OPT_STARTTLS)[0] == it.REP_ACK
    context = ssl.create_default_context(cafile=f"{creds}/ca/ca-cert.pem")
    c.sock = context.wrap_socket(c.sock, server_hostname="localhost")


def read_works(c):
    c.go("disk")
    error, data = c.call(it.CMD_READ, 4096, 512)
    assert error == 0 and data == bytes(range(256)) * 2


def test_off_answers_policy_and_goes_on_in_clear(off):
    with off.raw("disk") as c:
        c.greeting()
        reply_type, message = option(c, it.OPT_STARTTLS)
        assert reply_type == it.REP_ERR_POLICY, it.reply_name(reply_type)
        assert b"TLS is off" in message
        assert c.list_exports() == ["disk"]
        read_works(c)


def test_require_refuses_all_but_starttls(required, creds):
    with required.raw("disk") as c:
        c.greeting()
        for opt, data in ((it.OPT_LIST, b""), (it.OPT_STRUCTURED_REPLY, b""),
                          (it.OPT_INFO, struct.pack(">L", 4) + b"disk" + struct.pack(">H", 0)),
                          (it.OPT_GO, struct.pack(">L", 4) + b"disk" + struct.pack(">H", 0)), (99, b"x")):
            reply_type, _ = option(c, opt, data)
            assert reply_type == it.REP_ERR_TLS_REQD, f"option {opt}: {it.reply_name(reply_type)}"
        reply_type, _ = option(c, it.OPT_STARTTLS, b"junk")
        assert reply_type == it.REP_ERR_INVALID, it.reply_name(reply_type)
        upgrade(c, creds)
        assert c.list_exports() == ["disk"]
        reply_type, _ = option(c, it.OPT_STARTTLS)
        assert reply_type == it.REP_ERR_INVALID, "STARTTLS twice: " + it.reply_name(reply_type)
        read_works(c)
        # Many replies under TLS: more than one record, more than the socket holds.
        handles = [c.request(it.CMD_READ, i * 65536, 65536) for i in range(64)]
        for _ in range(len(handles)):  # in completion order
            error, got, data = c.simple_reply(65536)
            assert error == 0 and got in handles
            handles.remove(got)
            assert data == bytes(range(256)) * 256
        payload = os.urandom(300000)
        assert c.call(it.CMD_WRITE, 12345, 300000, payload=payload)[0] == 0
        assert c.call(it.CMD_READ, 12345, 300000) == (0, payload)
        c.request(it.CMD_DISC)
    with open(os.path.join(required.dir, "disk.img"), "rb") as f:
        f.seek(12345)
        assert f.read(300000) == payload, "the write under TLS did not reach the image"


def test_require_export_name_without_tls_ends_the_session(required):
    with required.raw("disk") as c:
        c.greeting()
        c.send_option(it.OPT_EXPORT_NAME, b"disk")
        assert c.wait_closed() == b"", "EXPORT_NAME without TLS got an answer"
    with required.raw("disk") as c:
        c.greeting()
        assert option(c, it.OPT_ABORT)[0] == it.REP_ACK
        c.wait_closed()
    assert "EXPORT_NAME without TLS" in required.logs()
    required.assert_alive()


def test_options_before_tls_are_forgotten(optional, creds):
    with optional.raw("disk") as c:
        c.greeting()
        assert option(c, it.OPT_STRUCTURED_REPLY)[0] == it.REP_ACK
        meta = struct.pack(">L", 4) + b"disk" + struct.pack(">LL", 1, 15) + b"base:allocation"
        c.send_option(it.OPT_SET_META_CONTEXT, meta)
        assert c.option_reply()[1] == it.REP_META_CONTEXT
        assert c.option_reply()[1] == it.REP_ACK
        upgrade(c, creds)
        # Simple replies now: structured replies were not asked for again.
        read_works(c)
        # And no meta context: BLOCK_STATUS is refused with EINVAL.
        error, _ = c.call(it.CMD_BLOCK_STATUS, 0, 4096)
        assert error == 22, error


def test_plain_clients_are_served_under_on(optional):
    with optional.raw("disk") as c:
        c.greeting()
        read_works(c)


def test_client_hello_in_the_same_packet_as_starttls(required, creds):
    """A client that does not wait for the ACK: the bytes after STARTTLS
    are its handshake's, and the server hands them to TLS."""
    context = ssl.create_default_context(cafile=f"{creds}/ca/ca-cert.pem")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")

    def pump(step):
        while True:
            try:
                return step()
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    c.send(outgoing.read())
                data = c.sock.recv(65536)
                assert data, "the server closed the connection"
                incoming.write(data)

    with required.raw("disk") as c:
        c.greeting()
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        c.send(struct.pack(">QLL", it.IHAVEOPT, it.OPT_STARTTLS, 0) + outgoing.read())
        assert c.option_reply()[1] == it.REP_ACK
        pump(tls.do_handshake)
        tls.write(struct.pack(">QLL", it.IHAVEOPT, it.OPT_LIST, 0))
        c.send(outgoing.read())
        reply = b""
        while len(reply) < 20 + 8 + 20:  # SERVER "disk", then ACK
            reply += pump(lambda: tls.read(65536))
        assert struct.unpack(">QLLL", reply[:20])[2] == it.REP_SERVER
        assert reply[24:28] == b"disk"
        assert struct.unpack(">QLLL", reply[28:48])[2] == it.REP_ACK


def test_a_broken_handshake_costs_only_its_connection(required, creds):
    with required.raw("disk") as c:
        c.greeting()
        assert option(c, it.OPT_STARTTLS)[0] == it.REP_ACK
        c.send(b"this is not a TLS ClientHello" * 10)
        c.wait_closed()
    with required.raw("disk") as c:
        c.greeting()
        assert option(c, it.OPT_STARTTLS)[0] == it.REP_ACK
    with required.raw("disk") as c:
        c.greeting()
        assert option(c, it.OPT_STARTTLS)[0] == it.REP_ACK
        c.send(b"\x15\x03\x03\x00\x02\x02\x28")  # a fatal alert instead of a ClientHello
        c.wait_closed()
    assert "TLS handshake failed" in required.logs()
    with required.raw("disk") as c:
        c.greeting()
        upgrade(c, creds)
        read_works(c)
    required.assert_alive()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
