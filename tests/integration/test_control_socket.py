#!/usr/bin/python3
"""Who may use the control socket.

- It is created mode 0600 (a socket, owned by the daemon's user), so
  another uid cannot even connect: iobandctl run as uid 1000 (setpriv) is
  refused with one line saying so.
- Opened up by an administrator (chmod 0666), the daemon's own check of the
  peer's credentials still holds: uid 1000 may read (`table`, `status`,
  `targets`, also `--json`; the same answers as the owner's) but not change
  (`message`, `create`, `remove` are refused with "permission denied", and
  nothing changes).
- The NBD socket's mode is --socket-mode's (0666 here, so other uids'
  clients connect), and without --socket-mode other uids cannot connect.
"""

import os
import stat
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
SIZE = 8 * MiB

watchdog = it.pytest_watchdog()
OTHER = ct.UID_A


@pytest.fixture(scope="module")
def daemon():
    with ct.Daemon(socket_mode="0666") as d:
        d.create("d1", it.sparse_file(d.path("d1.img"), SIZE), 1)
        yield d


def test_control_socket_is_0600(daemon):
    d = daemon
    st = os.lstat(d.control)
    assert stat.S_ISSOCK(st.st_mode), oct(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, f"control socket mode {stat.S_IMODE(st.st_mode):o}"
    assert st.st_uid == os.geteuid()


def test_other_uid_cannot_connect(daemon):
    d = daemon
    for args in (["table"], ["status"], ["message", "d1", "0", "weight", "10"]):
        r = d.ctl(*args, uid=OTHER)
        line = ct.one_line_error(r, f"uid {OTHER}: {args[0]}")
        assert r.returncode == 1
        assert "Permission denied" in line and d.control in line, line


def test_other_uid_reads_but_does_not_change(daemon):
    d = daemon
    os.chmod(d.control, 0o666)  # an administrator opens it up
    try:
        before = {"table": d.table(), "json": d.json_of("table"), "state": d.state_bytes()}
        # Reading: the same answers as the owner gets.
        assert d.ok("table", uid=OTHER) == before["table"]
        assert d.ok("status", uid=OTHER) == d.ok("status")
        assert d.ok("targets", uid=OTHER) == d.ok("targets")
        assert d.json_of("table", uid=OTHER) == before["json"]
        assert d.json_of("status", "d1", uid=OTHER)["devices"][0]["name"] == "d1"
        # Changing: refused by the daemon, whatever the socket's mode.
        for args, stdin in ((["message", "d1", "0", "weight", "10"], None),
                            (["message", "d1", "0", "reset"], None),
                            (["message", "d1", "0", "type", "user"], None),
                            (["create", "d2"], f"0 {SIZE // 512} ioband {d.path('d1.img')} 1\n"),
                            (["remove", "d1"], None),
                            (["remove", "--force", "d1"], None)):
            r = d.ctl(*args, input=stdin, uid=OTHER)
            line = ct.one_line_error(r, f"uid {OTHER}: {' '.join(args)}")
            assert r.returncode == 1, line
            assert "permission denied" in line.lower(), line
        assert d.table() == before["table"]
        assert d.json_of("table") == before["json"]
        assert d.state_bytes() == before["state"]
        # The owner still may.
        d.message("d1", "weight", 10)
    finally:
        os.chmod(d.control, 0o600)


def test_nbd_socket_mode(daemon):
    d = daemon
    assert stat.S_IMODE(os.stat(d.socket_path).st_mode) == 0o666
    with ct.Client(d.uri("d1"), uid=OTHER) as c:
        c.do("read 1 4096 0")


def test_nbd_socket_default_mode_keeps_others_out():
    old = os.umask(0o022)  # the daemon's socket mode comes from its umask
    try:
        d = ct.Daemon(socket_mode=None).start()
    finally:
        os.umask(old)
    try:
        d.create("d1", it.sparse_file(d.path("d1.img"), SIZE), 1)
        mode = stat.S_IMODE(os.stat(d.socket_path).st_mode)
        assert mode & 0o002 == 0, f"NBD socket mode {mode:o} without --socket-mode"
        with ct.Client(d.uri("d1"), uid=OTHER, connect=False) as c:
            reply = c.call("connect")
            assert reply.startswith("error") and "Permission denied" in reply, reply
        with ct.Client(d.uri("d1")) as c:
            c.do("read 1 4096 0")
    finally:
        d.stop()


if __name__ == "__main__":
    ct.require_root()
    sys.exit(it.run(__file__))
