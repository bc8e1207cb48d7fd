"""Helpers for the control-plane integration tests (test_control_*.py).

They build on iobandtest.py (which they use as it is) and add what the
control plane needs:

  Daemon        iobandd with no --export, a private state directory and a
                control socket; iobandctl against it (ctl, ok, json_of);
                restart with the same state
  parse_table / parse_status
                the dm-ioband `table` and `status` lines as dicts
  Client        a libnbd client in its own process, optionally as another
                uid (setpriv), driven line by line: its pid and uid are what
                `type pid` and `type user` classify
  fio_argv / fio_json / as_uid
                fio --ioengine=nbd command lines, its JSON report, setpriv

Tests that run clients as other uids need root (setpriv); they skip when not
run as root, since nothing else can change a process's uid.
"""

import json
import os
import select
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

IOBANDCTL = os.path.abspath(os.environ.get("IOBANDCTL") or os.path.join(it.SOURCE, "build", "bin", "iobandctl"))
PY = "/usr/bin/python3"  # the interpreter with libnbd's module
SECTOR = 512

# Unprivileged uids the clients run as; they need not exist in /etc/passwd.
UID_A = 1000
UID_B = 2000


def require_root():
    if os.geteuid() != 0:
        it.skip("runs clients as other uids with setpriv, which needs root")


def as_uid(uid, argv):
    """argv run as uid (and gid) `uid` with no supplementary groups."""
    if uid is None:
        return list(argv)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] + list(argv)


def data_file(path, size):
    """An image with real (not sparse, not zero) data on the disk."""
    chunk = os.urandom(it.MiB)
    with open(path, "wb") as f:
        for _ in range(size // it.MiB):
            f.write(chunk[:16] + os.urandom(16) + chunk[32:])  # cheap, not all alike
        f.flush()
        os.fsync(f.fileno())
    return path


# --- table and status lines ---------------------------------------------------

COUNTERS = ("read", "delayed_read", "read_sectors", "write", "delayed_write", "write_sectors")


def parse_table(text):
    """`iobandctl table`: {name: [start, sectors, target, major:minor, dgid, io_throttle, io_limit]}."""
    out = {}
    for line in text.splitlines():
        if line == "No devices found":
            continue
        name, _, rest = line.partition(": ")
        words = rest.split()
        assert len(words) == 7, f"table line with {len(words)} fields after the name: {line!r}"
        out[name] = words
    return out


def parse_status_fields(words):
    """The fields after a status line's name: {"start", "sectors", "target",
    "dgid", "groups": {id: {counter: n}}, "order": [ids as listed]}."""
    assert len(words) >= 4 and (len(words) - 4) % 7 == 0, f"status fields: {words!r}"
    groups = {}
    order = []
    for i in range(4, len(words), 7):
        gid = int(words[i])
        groups[gid] = dict(zip(COUNTERS, (int(w) for w in words[i + 1:i + 7])))
        order.append(gid)
    return {"start": int(words[0]), "sectors": int(words[1]), "target": words[2], "dgid": int(words[3]),
            "groups": groups, "order": order}


def parse_status(text):
    """`iobandctl status`: {name: parse_status_fields(...)}."""
    out = {}
    for line in text.splitlines():
        if line == "No devices found":
            continue
        name, _, rest = line.partition(": ")
        out[name] = parse_status_fields(rest.split())
    return out


def settings_of_status(status_json):
    """`status --json` without what I/O moves (counters, histograms,
    connections): what must survive a restart unchanged."""
    devices = []
    for d in status_json["devices"]:
        d = {k: v for k, v in d.items() if k not in ("connections", "groups")}
        devices.append(d)
    groups = [[g["id"] for g in d["groups"]] for d in status_json["devices"]]
    return devices, groups


# --- the daemon ---------------------------------------------------------------

class Daemon(it.Server):
    """iobandd --state-dir DIR/state --socket DIR/nbd.sock --control DIR/ioband.ctl,
    no --export (with no state.json it also serves `demo`)."""

    def __init__(self, tmpdir=None, socket_mode="0666", args=()):
        tmpdir = tmpdir or it.make_tmpdir("ioband-control.")
        # Clients of other uids must reach the sockets in here.
        os.chmod(tmpdir, 0o755)
        self.control = os.path.join(tmpdir, "ioband.ctl")
        self.socket_mode = socket_mode
        extra = ["--control", self.control]
        if socket_mode and _has_socket_mode():
            extra += ["--socket-mode", socket_mode]
        super().__init__([], args=extra + list(args), tmpdir=tmpdir, peer="iobandd")
        self.state_path = os.path.join(self.state_dir, "state.json")

    def start(self):
        super().start()
        if self.socket_mode and not _has_socket_mode():
            os.chmod(self.socket_path, int(self.socket_mode, 8))
        # The control socket is created before the NBD server starts to serve,
        # but wait for it anyway.
        deadline = time.monotonic() + it.TIMEOUT
        while not os.path.exists(self.control):
            if time.monotonic() > deadline:
                self.print_logs()
                raise RuntimeError(f"no control socket at {self.control}")
            time.sleep(0.05)
        return self

    @property
    def proc(self):
        return self.procs[-1][0]

    def restart(self):
        self.stop()
        assert self.procs[-1][0].returncode == 0, f"iobandd exited {self.procs[-1][0].returncode} on SIGTERM"
        return self.start()

    def path(self, name):
        return os.path.join(self.dir, name)

    # -- iobandctl
    def ctl(self, *args, input=None, uid=None, timeout=None):
        """iobandctl --control ... ARGS: the CompletedProcess (text)."""
        argv = as_uid(uid, [IOBANDCTL, "--control", self.control] + [str(a) for a in args])
        return subprocess.run(argv, input=input if input is not None else "", capture_output=True, text=True,
                              timeout=timeout or it.TIMEOUT, cwd="/")

    def ok(self, *args, input=None, uid=None):
        """iobandctl ARGS, which must succeed: its standard output."""
        r = self.ctl(*args, input=input, uid=uid)
        if r.returncode != 0:
            self.assert_alive()
            raise AssertionError(f"iobandctl {' '.join(map(str, args))} exited {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def json_of(self, *args, uid=None):
        """iobandctl --json ARGS: the reply's data."""
        reply = json.loads(self.ok("--json", *args, uid=uid))
        assert reply.get("ok") is True, reply
        return reply["data"]

    def create(self, name, path, dgid, *rest, sectors=None):
        if sectors is None:
            sectors = os.path.getsize(path) // SECTOR
        line = " ".join(str(w) for w in [0, sectors, "ioband", path, dgid, *rest]) + "\n"
        return self.ok("create", name, input=line)

    def message(self, name, *words):
        return self.ok("message", name, 0, *words)

    def table(self, name=None):
        return self.ok("table", *([name] if name else []))

    def status(self):
        return parse_status(self.ok("status"))

    def counters(self, name, group=-1):
        return self.status()[name]["groups"][group]

    def state_bytes(self):
        with open(self.state_path, "rb") as f:
            return f.read()


_socket_mode_known = None


def _has_socket_mode():
    global _socket_mode_known
    if _socket_mode_known is None:
        r = subprocess.run([it.IOBANDD, "--help"], capture_output=True, text=True)
        _socket_mode_known = "--socket-mode" in r.stdout
    return _socket_mode_known


def device_major_minor(path):
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


# --- a client in its own process ------------------------------------------------

_CLIENT = r"""
import sys, nbd
uri = sys.argv[1]
h = None
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    try:
        if words[0] == "connect":
            h = nbd.NBD()
            h.connect_uri(uri)
        elif words[0] == "read":          # COUNT SIZE OFFSET
            n, size, offset = map(int, words[1:])
            for i in range(n):
                h.pread(size, offset + i * size)
        elif words[0] == "write":         # COUNT SIZE OFFSET
            n, size, offset = map(int, words[1:])
            for i in range(n):
                h.pwrite(bytes([(offset // size + i) % 251 + 1]) * size, offset + i * size)
        elif words[0] == "flush":
            h.flush()
        elif words[0] == "close":
            h.shutdown()
            h = None
        print("ok", flush=True)
    except nbd.Error as e:
        print("error", e.errnum, (e.string or "").replace("\n", " "), flush=True)
"""


class Client:
    """A libnbd client in a process of its own (as `uid` if given). Its pid is
    the peer pid iobandd sees, its uid the peer uid."""

    def __init__(self, uri, uid=None, connect=True):
        self.proc = subprocess.Popen(as_uid(uid, [PY, "-c", _CLIENT, uri]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                                     preexec_fn=it._pdeathsig)
        assert self._reply() == "ready"
        if connect:
            self.do("connect")

    @property
    def pid(self):
        return self.proc.pid

    def _reply(self, timeout=it.TIMEOUT):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"client {self.pid} did not answer within {timeout:.0f}s")
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError(f"client {self.pid} exited: {self.proc.stderr.read()}")
        return line.strip()

    def call(self, line, timeout=it.TIMEOUT):
        """Send one command; its answer: "ok" or "error ERRNO TEXT"."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout)

    def do(self, line):
        reply = self.call(line)
        assert reply == "ok", f"client {self.pid}: {line}: {reply}"

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=it.TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- fio ------------------------------------------------------------------------

def fio_argv(uri, name, *options, uid=None):
    argv = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--output-format=json"]
    return as_uid(uid, argv + list(options))


def fio_json(stdout):
    """fio's JSON report (the nbd engine prints a line before it)."""
    start = stdout.find("\n{")
    start = 0 if stdout.startswith("{") else start + 1
    assert start >= 0 and stdout[start:start + 1] == "{", f"no JSON in fio's output: {stdout[:2000]!r}"
    return json.loads(stdout[start:])


def one_line_error(result, what):
    """A refused iobandctl: non-zero exit, nothing on stdout, one line on stderr."""
    assert result.returncode in (1, 2), f"{what}: exit {result.returncode}, stderr {result.stderr!r}"
    assert result.stdout == "", f"{what}: printed {result.stdout!r}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("iobandctl: "), f"{what}: stderr {result.stderr!r}"
    return lines[0]
