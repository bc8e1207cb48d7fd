#!/usr/bin/python3
"""Access lists: who may open an export, and who may only read it.

- Unix sockets: clients as other uids (setpriv). A uid the rules do not
  name is refused (libnbd, qemu-img: NBD_REP_ERR_POLICY with a sentence),
  an allowed uid reads and writes, an allow-ro uid sees a read-only export
  (nbdinfo) and its writes, trims and zeroes get EPERM; gid rules match
  supplementary groups. NBD_OPT_LIST (nbdinfo --list) shows each client the
  exports it may open, and no other.
- The wire, for a refused client: INFO and GO answer NBD_REP_ERR_POLICY,
  meta contexts too, EXPORT_NAME hangs up (it has no error reply), LIST
  leaves the export out.
- TCP: rules on addresses, seen from source addresses 127.0.0.1, 127.0.0.2,
  127.0.0.3 and ::1; --listen without a host serves loopback only, with
  no warning; 0.0.0.0 warns.
- The control plane: rules on the create line and by `message NAME 0
  access`, shown by `table` and `--json`, kept across a restart; a changed
  list applies to new connections; bad rules in --export, create and
  message are refused with one sentence and change nothing.
"""

import json
import os
import socket
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
SIZE = 4 * MiB
EPERM = 1
ALLOWED = ct.UID_A        # 1000
READER = ct.UID_B         # 2000
STRANGER = 3000
GROUP = 4000              # a supplementary group

watchdog = it.pytest_watchdog()


def as_user(uid, argv, groups=()):
    """argv as uid (and gid) `uid`, with exactly the supplementary `groups`."""
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", *extra, "--"] + list(argv)


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=it.TIMEOUT, cwd="/")


def listed(uri, uid=None, groups=()):
    """The export names nbdinfo --list shows this client."""
    argv = ["nbdinfo", "--json", "--list", uri]
    r = run(as_user(uid, argv, groups) if uid is not None else argv)
    assert r.returncode == 0, r.stderr
    return sorted(e["export-name"] for e in json.loads(r.stdout)["exports"])


# A libnbd session in a process of its own, as a uid, printing one line per step.
NBDSH_SCRIPT = r"""
import errno, sys, nbd
h = nbd.NBD()
try:
    h.connect_uri(sys.argv[1])
except nbd.Error as e:
    print("refused", e.string.replace("\n", " "))
    sys.exit(0)
print("read_only", h.is_read_only())
print("read", len(h.pread(4096, 0)))
for what, op in (("write", lambda: h.pwrite(b"\1" * 4096, 0)), ("trim", lambda: h.trim(4096, 0)),
                 ("zero", lambda: h.zero(4096, 0))):
    try:
        op()
        print(what, "ok")
    except nbd.Error as e:
        print(what, errno.errorcode.get(e.errnum, e.errnum))
h.shutdown()
"""


def session(uri, uid=None, groups=()):
    """{step: result} of NBDSH_SCRIPT against uri. strict mode off, so the
    server (not libnbd) answers writes to a read-only export."""
    script = NBDSH_SCRIPT.replace("h = nbd.NBD()", "h = nbd.NBD(); h.set_strict_mode(0)")
    argv = [ct.PY, "-c", script, uri]
    r = run(as_user(uid, argv, groups) if uid is not None else argv)
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


@pytest.fixture(scope="module")
def unix_server():
    tmp = it.make_tmpdir("ioband-access.")
    os.chmod(tmp, 0o755)  # other uids reach the socket in here
    images = {n: it.sparse_file(os.path.join(tmp, f"{n}.img"), SIZE) for n in ("open", "mine", "shared", "team")}
    exports = [
        f"open={images['open']}",
        f"mine={images['mine']},allow=uid:{ALLOWED}",
        f"shared={images['shared']},allow=uid:{ALLOWED},allow-ro=uid:{READER},allow=uid:0",
        f"team={images['team']},deny=uid:{STRANGER},allow-ro=gid:{GROUP}",
    ]
    with it.Server(exports, args=["--socket-mode", "0666"], tmpdir=tmp, peer="iobandd") as server:
        yield server


def test_list_shows_each_client_what_it_may_open(unix_server):
    s = unix_server
    uri = f"nbd+unix://?socket={s.socket_path}"
    assert listed(uri) == ["open", "shared"]
    assert listed(uri, ALLOWED) == ["mine", "open", "shared"]
    assert listed(uri, READER) == ["open", "shared"]
    assert listed(uri, STRANGER) == ["open"]
    assert listed(uri, READER, groups=[GROUP]) == ["open", "shared", "team"]
    # deny=uid:3000 comes first: its groups do not help.
    assert listed(uri, STRANGER, groups=[GROUP]) == ["open"]


def test_a_uid_not_allowed_is_refused(unix_server):
    s = unix_server
    got = session(s.uri("mine"), STRANGER)
    assert "refused" in got and "policy" in got["refused"], got
    r = run(as_user(STRANGER, ["qemu-img", "info", s.uri("mine")]))
    assert r.returncode != 0
    assert "access to export 'mine' denied for uid 3000 gid 3000" in r.stderr, r.stderr
    got = session(s.uri("mine"))  # root is not named either
    assert "refused" in got, got
    log = open(s.procs[0][1]).read()
    assert "from uid 3000 gid 3000: refused export 'mine' by its access list" in log


def test_an_allowed_uid_reads_and_writes(unix_server):
    s = unix_server
    got = session(s.uri("mine"), ALLOWED)
    assert got == {"read_only": "False", "read": "4096", "write": "ok", "trim": "ok", "zero": "ok"}, got
    got = session(s.uri("open"), STRANGER)  # no rules: everyone
    assert got["read_only"] == "False" and got["write"] == "ok", got


def test_an_allow_ro_uid_reads_only(unix_server):
    s = unix_server
    got = session(s.uri("shared"), READER)
    assert got == {"read_only": "True", "read": "4096", "write": "EPERM", "trim": "EPERM", "zero": "EPERM"}, got
    r = run(as_user(READER, ["nbdinfo", "--json", s.uri("shared")]))
    assert r.returncode == 0, r.stderr
    export = json.loads(r.stdout)["exports"][0]
    assert export["is_read_only"] is True
    assert export["can_trim"] is False and export["can_zero"] is False
    # The same export is read-write for the uids allowed to write.
    assert session(s.uri("shared"), ALLOWED)["write"] == "ok"
    assert session(s.uri("shared"))["write"] == "ok"
    # A gid rule matches a supplementary group.
    got = session(s.uri("team"), READER, groups=[GROUP])
    assert got["read_only"] == "True" and got["write"] == "EPERM", got
    assert "refused" in session(s.uri("team"), READER)


def test_the_wire_for_a_refused_client(unix_server):
    s = unix_server  # the test runs as root: "mine" is closed to it
    with it.RawClient(s.socket_path) as c:
        c.greeting()
        assert sorted(c.list_exports()) == ["open", "shared"]
        for option in (it.OPT_INFO, it.OPT_GO):
            with pytest.raises(it.OptionError) as e:
                c.info_or_go(option, "mine")
            assert e.value.reply_type == it.REP_ERR_POLICY
            assert b"access to export 'mine' denied for uid 0 gid 0" == e.value.data
        for option in (it.OPT_LIST_META_CONTEXT,):
            name = b"mine"
            c.send_option(option, len(name).to_bytes(4, "big") + name + (0).to_bytes(4, "big"))
            _, reply_type, _ = c.option_reply()
            assert reply_type == it.REP_ERR_POLICY
        # Unknown stays unknown: a refusal is not an existence test for other names.
        with pytest.raises(it.OptionError) as e:
            c.info_or_go(it.OPT_INFO, "nothing-here")
        assert e.value.reply_type == it.REP_ERR_UNKNOWN
        # The session goes on: an export it may open.
        size, flags, _ = c.go("open")
        assert size == SIZE and not flags & it.TFLAG_READ_ONLY
    with it.RawClient(s.socket_path) as c:
        c.greeting()
        c.send_option(it.OPT_EXPORT_NAME, b"mine")
        assert c.wait_closed() == b""  # EXPORT_NAME has no error reply: it hangs up
    with it.RawClient(s.socket_path) as c:
        c.greeting()
        _, flags = c.export_name("shared")
        assert not flags & it.TFLAG_READ_ONLY


class BoundClient(it.RawClient):
    """A raw client whose TCP connection comes from `source`."""

    def __init__(self, address, source):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(it.TIMEOUT)
        self.sock.bind((source, 0))
        self.sock.connect(address)
        self.handshake_flags = None
        self.next_handle = 1


def test_tcp_address_rules():
    port = it.free_tcp_port()
    tmp = it.make_tmpdir("ioband-access-tcp.")
    image = it.sparse_file(os.path.join(tmp, "t.img"), SIZE)
    spec = f"t={image},deny=127.0.0.3,allow=127.0.0.2,allow=::1,allow-ro=127.0.0.0/8"
    # No host: loopback only, IPv4 and IPv6, and no warning.
    with it.Server([spec], args=["--listen", str(port)], tmpdir=tmp, peer="iobandd") as s:
        ipv4 = ("127.0.0.1", port)
        outcomes = {}
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            with BoundClient(ipv4, source) as c:
                c.greeting()
                names = c.list_exports()
                if not names:
                    with pytest.raises(it.OptionError) as e:
                        c.go("t")
                    assert e.value.reply_type == it.REP_ERR_POLICY
                    outcomes[source] = "refused"
                    continue
                _, flags, _ = c.go("t")
                outcomes[source] = "read-only" if flags & it.TFLAG_READ_ONLY else "read-write"
                error, _ = c.call(it.CMD_WRITE, 0, 512, payload=b"x" * 512)
                assert error == (EPERM if flags & it.TFLAG_READ_ONLY else 0), (source, error)
        assert outcomes == {"127.0.0.1": "read-only", "127.0.0.2": "read-write", "127.0.0.3": "refused"}
        # Real clients over both loopback addresses.
        assert session(f"nbd://127.0.0.1:{port}/t")["read_only"] == "True"
        assert session(f"nbd://[::1]:{port}/t") == {"read_only": "False", "read": "4096", "write": "ok",
                                                     "trim": "ok", "zero": "ok"}
        log = open(s.procs[0][1]).read()
        assert f"tcp [::1]:{port} 127.0.0.1:{port}" in log or f"tcp 127.0.0.1:{port} [::1]:{port}" in log, log
        assert "warning" not in log
        # Nothing on another address of the host (if it has one).
        for address in other_addresses():
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=5).close()


def other_addresses():
    r = run(["hostname", "-I"])
    return [a for a in r.stdout.split() if a and not a.startswith("127.") and a != "::1"][:2]


def test_a_listener_other_hosts_reach_warns():
    port = it.free_tcp_port()
    tmp = it.make_tmpdir("ioband-access-tcp.")
    image = it.sparse_file(os.path.join(tmp, "t.img"), SIZE)
    with it.Server([f"t={image}"], listen=f"0.0.0.0:{port}", tmpdir=tmp, peer="iobandd") as s:
        log = open(s.procs[0][1]).read()
        assert f"warning: --listen 0.0.0.0:{port} serves NBD to other hosts without TLS" in log, log


@pytest.fixture()
def daemon():
    with ct.Daemon(socket_mode="0666") as d:
        yield d


def test_rules_by_the_control_plane_persist(daemon):
    d = daemon
    path = it.sparse_file(d.path("vm1.img"), SIZE)
    d.create("vm1", path, 1, f"allow=uid:{ALLOWED}", f"allow-ro=uid:{READER}")
    table = d.table()
    assert table.endswith(f" 1 4 128 allow=uid:{ALLOWED} allow-ro=uid:{READER}\n"), table
    assert d.json_of("table", "vm1")["devices"][0]["access"] == [f"allow=uid:{ALLOWED}", f"allow-ro=uid:{READER}"]
    assert session(d.uri("vm1"), READER)["write"] == "EPERM"
    assert "refused" in session(d.uri("vm1"), STRANGER)

    # A new list holds for new connections; an open one keeps its access.
    with ct.Client(d.uri("vm1"), uid=READER) as kept:
        assert d.message("vm1", "access", f"allow=uid:{STRANGER}", "deny=all") == f"allow=uid:{STRANGER} deny=all\n"
        kept.do("read 1 4096 0")
        assert "refused" in session(d.uri("vm1"), READER)
    assert session(d.uri("vm1"), STRANGER)["write"] == "ok"
    assert d.message("vm1", "access") == f"allow=uid:{STRANGER} deny=all\n"

    state = json.loads(d.state_bytes())
    assert state["devices"][0]["access"] == [f"allow=uid:{STRANGER}", "deny=all"]
    d.restart()
    assert d.json_of("table")["devices"][0]["access"] == [f"allow=uid:{STRANGER}", "deny=all"]
    assert "refused" in session(d.uri("vm1"), READER)
    assert session(d.uri("vm1"), STRANGER)["write"] == "ok"

    d.message("vm1", "access", "allow=all")  # back to everyone
    assert "access" not in json.loads(d.state_bytes())["devices"][0]
    assert session(d.uri("vm1"), READER)["write"] == "ok"


def test_bad_rules_are_refused_and_change_nothing(daemon):
    d = daemon
    path = it.sparse_file(d.path("vm1.img"), SIZE)
    d.create("vm1", path, 1, "allow=uid:0")
    before = d.state_bytes()
    cases = [
        (["message", "vm1", "0", "access", "allow=uid:0", "permit=all"], "unknown action \"permit\""),
        (["message", "vm1", "0", "access", "allow=10.1.0.0/8"], "the network is 10.0.0.0/8"),
        (["message", "vm1", "0", "access", "deny=all", "allow=uid:0"], "\"allow=uid:0\" can never apply"),
        (["message", "vm1", "0", "access", "allow=uid:no-such-user-x"], "no user named \"no-such-user-x\""),
    ]
    for args, says in cases:
        r = d.ctl(*args)
        line = ct.one_line_error(r, " ".join(args))
        assert r.returncode == 2 and says in line, line
    r = d.ctl("create", "vm2", input=f"0 8 ioband {path} 1 allow=::1/129\n")
    line = ct.one_line_error(r, "create")
    assert r.returncode == 2 and "must be a number from 0 to 128" in line, line
    assert d.state_bytes() == before
    assert d.json_of("table")["devices"][0]["access"] == ["allow=uid:0"]
    assert "vm1" in listed(f"nbd+unix://?socket={d.socket_path}")  # root is allowed

    for spec, says in ((f"x={path},allow=uid:", "uid: needs a user"),
                       (f"x={path},allow=10.0.0.0/33", "must be a number from 0 to 32"),
                       (f"x={path},allow-rw=all", "unknown key 'allow-rw'"),
                       (f"x={path},deny=all,allow=tcp", "can never apply")):
        r = run([it.IOBANDD, "--state-dir", d.path("unused"), "--export", spec])
        assert r.returncode == 2, (spec, r.returncode, r.stderr)
        assert r.stderr.startswith("iobandd: --export x: ") and says in r.stderr, r.stderr


if __name__ == "__main__":
    ct.require_root()
    sys.exit(it.run(__file__))
