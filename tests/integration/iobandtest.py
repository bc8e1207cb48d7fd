"""Shared helpers for ioband's integration tests written in Python.

Each test script starts its own server on a private socket in a private
temporary directory, waits until it accepts connections, and stops it at
the end (the server also dies with the test process: PR_SET_PDEATHSIG).

The server is `iobandd` ($IOBANDD).  For validating the tests themselves,
IOBAND_TEST_PEER=nbdkit runs the same export specs on nbdkit instead (one
nbdkit per export, each on its own socket), so that a test known to pass
against a correct peer and failing against iobandd points at iobandd.

Run a test script directly: /usr/bin/python3 tests/integration/test_x.py
(it runs its test functions with pytest).  IOBAND_TEST_KEEP=1 keeps the
temporary directory (server logs, images) for a post-mortem.

Also a small command line, used by lib.sh:
  iobandtest.py nbdkit-argv SPEC SOCKET     (NUL-separated argv)
  iobandtest.py wait-ready PID ADDRESS [TIMEOUT]
"""

import atexit
import contextlib
import ctypes
import faulthandler
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("IOBAND_SOURCE") or os.path.dirname(os.path.dirname(HERE))
IOBANDD = os.environ.get("IOBANDD") or os.path.join(SOURCE, "build", "bin", "iobandd")
PEER = os.environ.get("IOBAND_TEST_PEER", "iobandd")
KEEP = os.environ.get("IOBAND_TEST_KEEP", "") not in ("", "0")

# Generous: the suite runs on slow, noisy 2-core machines.
TIMEOUT = float(os.environ.get("IOBAND_TEST_TIMEOUT", "60"))
# One test function hung this long: print tracebacks and server logs, exit.
WATCHDOG = float(os.environ.get("IOBAND_TEST_WATCHDOG", "240"))

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MAX_PAYLOAD = 32 * MiB  # the block size maximum iobandd advertises

# --- NBD protocol constants (doc/proto.md of NetworkBlockDevice/nbd) -------

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0  # client flags
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1
REP_ERR_POLICY = REP_FLAG_ERROR | 2
REP_ERR_INVALID = REP_FLAG_ERROR | 3
REP_ERR_PLATFORM = REP_FLAG_ERROR | 4
REP_ERR_TLS_REQD = REP_FLAG_ERROR | 5
REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6
REP_ERR_SHUTDOWN = REP_FLAG_ERROR | 7
REP_ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR | 8
REP_ERR_TOO_BIG = REP_FLAG_ERROR | 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_ROTATIONAL = 1 << 4
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_SEND_DF = 1 << 7
TFLAG_CAN_MULTI_CONN = 1 << 8
TFLAG_SEND_CACHE = 1 << 10
TFLAG_SEND_FAST_ZERO = 1 << 11

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# NBD error values
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108


def log(*args):
    print("#", *args, flush=True)


def skip(reason):
    print(f"SKIP: {reason}", flush=True)
    sys.exit(77)


def require_nbd():
    """Return the libnbd Python module, or skip when it is truly missing."""
    try:
        import nbd  # noqa: PLC0415
    except ImportError:
        skip(f"python3-libnbd is not installed for {sys.executable}")
    return nbd


def require_tools(*tools):
    for tool in tools:
        if shutil.which(tool) is None:
            skip(f"{tool} is not installed")


# --- temporary directories --------------------------------------------------

_tmpdirs = []


def _remove_tmpdirs():
    for d in _tmpdirs:
        if KEEP:
            print(f"# kept {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(_remove_tmpdirs)


def make_tmpdir(prefix="ioband-test."):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def random_file(path, size, seed=None):
    """Write `size` bytes of (reproducible when seeded) random data."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(rng.randbytes(n) if seed is not None else os.urandom(n))
            left -= n
    return path


def sparse_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def rss_bytes(pid):
    """The resident memory of process pid, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- export specs -------------------------------------------------------------

EXPORT_KEYS = {"size", "readonly", "backend", "fault-errno", "fault-rate",
               "fault-delay-ms", "fault-offset", "fault-length", "description"}


def parse_export_spec(spec):
    """NAME=PATH[,key[=value]]... -> (name, path, {key: value})."""
    name, _, rest = spec.partition("=")
    path, *items = rest.split(",")
    keys = {}
    for item in items:
        key, eq, value = item.partition("=")
        if key not in EXPORT_KEYS:
            raise ValueError(f"unknown export key {key!r} in {spec!r}")
        keys[key] = value if eq else True
    return name, path, keys


def nbdkit_argv(spec, sock=None, listen=None):
    """An nbdkit command line serving one iobandd export spec.

    The filters make nbdkit advertise what iobandd's contract says: the
    export name and description, block sizes 1/4096/32M with larger
    requests rejected, fault injection and delay."""
    name, path, keys = parse_export_spec(spec)
    # (nbdkit 1.32 with several threads crashes on a client that hangs up
    # with replies pending: IOBAND_TEST_NBDKIT_THREADS=1 avoids it.)
    threads = os.environ.get("IOBAND_TEST_NBDKIT_THREADS", "16")
    argv = ["nbdkit", "--exit-with-parent", "-f", "-t", threads]
    if sock:
        argv += ["-U", sock]
    if listen:
        host, _, port = listen.rpartition(":")
        argv += ["-i", host, "-p", port]
    if keys.get("readonly"):
        argv.append("-r")
    params = [f"exportname={name}", "exportname-list=explicit", "exportname-strict=true",
              "blocksize-minimum=1", "blocksize-preferred=4096",
              f"blocksize-maximum={MAX_PAYLOAD}", "blocksize-error-policy=error"]
    filters = ["exportname", "blocksize-policy"]
    if "description" in keys:
        params.append(f"exportdesc=fixed:{keys['description']}")
    if "fault-delay-ms" in keys:
        filters.append("delay")
        ms = keys["fault-delay-ms"]
        params += [f"delay-{op}={ms}ms" for op in ("read", "write", "zero", "trim", "cache", "extents")]
    if "fault-errno" in keys:
        filters.append("error")
        params += [f"error={keys['fault-errno']}", f"error-rate={keys.get('fault-rate', '1')}"]
    backend = keys.get("backend", "raw")
    if backend == "memory":
        plugin = ["memory", f"size={keys['size']}"]
    else:
        if "size" in keys:
            filters.append("truncate")
            params.append(f"truncate={keys['size']}")
        plugin = ["file", f"file={path}"]
        # nbdkit's file plugin does not advertise fast zero on every file system.
        filters.append("nozero")
        params += ["zeromode=plugin", "fastzeromode=ignore"]
    argv += [f"--filter={f}" for f in filters] + plugin + params
    return name, argv


# --- waiting for a server ---------------------------------------------------

def _connect_socket(address, timeout):
    if isinstance(address, tuple):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


def probe(address, timeout=10):
    """True when a server at `address` sends an NBD newstyle greeting.
    Ends the handshake politely with NBD_OPT_ABORT."""
    try:
        s = _connect_socket(address, timeout)
    except OSError:
        return False
    try:
        greeting = b""
        while len(greeting) < 18:
            chunk = s.recv(18 - len(greeting))
            if not chunk:
                return False
            greeting += chunk
        magic, opt = struct.unpack(">QQ", greeting[:16])
        if magic != NBDMAGIC or opt != IHAVEOPT:
            return False
        s.sendall(struct.pack(">LQLL", FLAG_C_FIXED_NEWSTYLE, IHAVEOPT, OPT_ABORT, 0))
        try:
            s.recv(64)
        except OSError:
            pass
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_ready(address, alive, timeout=TIMEOUT, what="server"):
    """Wait until `address` accepts an NBD connection; `alive()` says the
    server process still runs (no point in waiting for a dead one)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before accepting connections on {address}")
        if (isinstance(address, tuple) or os.path.exists(address)) and probe(address):
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise RuntimeError(f"{what} did not accept connections on {address} within {timeout:.0f}s")


def _pdeathsig():
    # Die with the test: a test killed by its time limit leaves no server behind.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


@contextlib.contextmanager
def stalling_file(d, seconds):
    """A 16 MiB file whose reads and writes each block `seconds` in the kernel:
    nbdkit's memory plugin behind its delay filter, as a file by nbdfuse.
    For pytest tests (a missing FUSE skips the test)."""
    import pytest  # noqa: PLC0415

    require_tools("nbdkit", "nbdfuse")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("mounting a FUSE file system needs root and /dev/fuse")
    sock = os.path.join(d, "nbdkit.sock")
    mnt = os.path.join(d, "fuse")
    os.mkdir(mnt)
    kit = subprocess.Popen(["nbdkit", "--exit-with-parent", "-f", "-U", sock, "--filter=delay", "memory",
                            "size=16M", f"rdelay={seconds}", f"wdelay={seconds}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pdeathsig)
    fuse = None
    try:
        wait_ready(sock, lambda: kit.poll() is None, what="nbdkit")
        fuse = subprocess.Popen(["nbdfuse", mnt, f"nbd+unix:///?socket={sock}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pdeathsig)
        path = os.path.join(mnt, "nbd")
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(path):
            if fuse.poll() is not None:
                pytest.skip(f"nbdfuse: {fuse.stderr.read().decode().strip()}")
            assert time.monotonic() < deadline, "nbdfuse did not mount"
            time.sleep(0.05)
        yield path
    finally:
        if fuse:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
            fuse.terminate()
            fuse.wait()
        kit.terminate()
        kit.wait()


# --- the server under test --------------------------------------------------

_servers = []


class Server:
    """iobandd (or the nbdkit peer) serving `exports` (iobandd --export specs)."""

    def __init__(self, exports, *, listen=None, args=(), tmpdir=None, peer=None,
                 default_socket=False):
        self.exports = list(exports)
        self.listen = listen
        self.args = list(args)
        self.dir = tmpdir or make_tmpdir()
        self.peer = peer or PEER
        self.procs = []  # (Popen, log path)
        self._sockets = {}
        self.state_dir = os.path.join(self.dir, "state")
        # default_socket: no --socket, so iobandd uses STATE_DIR/ioband.sock.
        self.default_socket = default_socket
        self.socket_path = os.path.join(self.state_dir if default_socket else self.dir,
                                        "ioband.sock" if default_socket else "nbd.sock")
        self.returncode = None
        _servers.append(self)

    # -- addresses
    def names(self):
        return [parse_export_spec(e)[0] for e in self.exports]

    def sock(self, name):
        if self.peer == "iobandd":
            return self.socket_path
        return self._sockets[name]

    def uri(self, name):
        return f"nbd+unix:///{name}?socket={self.sock(name)}"

    def tcp_address(self):
        host, _, port = self.listen.rpartition(":")
        return (host, int(port))

    def tcp_uri(self, name):
        return f"nbd://{self.listen}/{name}"

    # -- lifetime
    def start(self):
        if self.peer == "iobandd":
            self._start_iobandd()
        elif self.peer == "nbdkit":
            self._start_nbdkit()
        else:
            raise RuntimeError(f"unknown IOBAND_TEST_PEER {self.peer!r}")
        return self

    def _spawn(self, argv, log_name):
        log_path = os.path.join(self.dir, log_name)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        self.procs.append((proc, log_path))
        return proc

    def _start_iobandd(self):
        if not os.access(IOBANDD, os.X_OK):
            raise RuntimeError(f"iobandd not found at {IOBANDD} (build it with `make build`)")
        os.makedirs(self.state_dir, exist_ok=True)
        argv = [IOBANDD, "--state-dir", self.state_dir]
        if not self.default_socket:
            argv += ["--socket", self.socket_path]
        if self.listen:
            argv += ["--listen", self.listen]
        for e in self.exports:
            argv += ["--export", e]
        argv += self.args
        log("starting:", " ".join(argv))
        proc = self._spawn(argv, "iobandd.log")
        self._wait(self.socket_path, proc)
        if self.listen:
            self._wait(self.tcp_address(), proc)

    def _start_nbdkit(self):
        for i, spec in enumerate(self.exports):
            sock = os.path.join(self.dir, f"nbdkit{i}.sock")
            name, argv = nbdkit_argv(spec, sock=sock)
            self._sockets[name] = sock
            log("starting:", " ".join(argv))
            self._wait(sock, self._spawn(argv, f"nbdkit{i}.log"))
        if self.listen:
            # nbdkit listens on a Unix socket or TCP: one more for TCP, serving
            # the first export (a RAM disk is not shared between the two).
            _, argv = nbdkit_argv(self.exports[0], listen=self.listen)
            log("starting:", " ".join(argv))
            self._wait(self.tcp_address(), self._spawn(argv, "nbdkit-tcp.log"))

    def _wait(self, address, proc):
        try:
            wait_ready(address, lambda: proc.poll() is None, what=self.peer)
        except RuntimeError:
            self.print_logs()
            raise

    @property
    def pid(self):
        return self.procs[0][0].pid

    def alive(self):
        return bool(self.procs) and all(p.poll() is None for p, _ in self.procs)

    def assert_alive(self):
        for p, log_path in self.procs:
            if p.poll() is not None:
                self.print_logs()
                raise AssertionError(f"{self.peer} (pid {p.pid}) died with status {p.returncode}")

    def signal(self, sig):
        for p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def wait(self, timeout=TIMEOUT):
        """Wait for every server process; returns the first one's status."""
        codes = [p.wait(timeout=timeout) for p, _ in self.procs]
        self.returncode = codes[0] if codes else None
        return self.returncode

    def stop(self, timeout=TIMEOUT):
        for p, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for p, _ in self.procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.peer} pid {p.pid} ignored SIGTERM for {timeout:.0f}s; killing it")
                p.kill()
                p.wait()

    def logs(self):
        out = []
        for _, log_path in self.procs:
            try:
                with open(log_path, errors="replace") as f:
                    out.append(f.read())
            except OSError:
                pass
        return "\n".join(out)

    def print_logs(self, limit=200):
        for _, log_path in self.procs:
            try:
                with open(log_path, errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            print(f"--- {log_path} (last {min(limit, len(lines))} of {len(lines)} lines)")
            for line in lines[-limit:]:
                print(line)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.print_logs(limit=60)  # pytest shows it only when a test failed

    # -- clients
    def connect(self, name, *, strict=True, structured=True, meta=("base:allocation",),
                opt_mode=False):
        """A connected libnbd handle (already through NBD_OPT_GO unless opt_mode)."""
        nbd = require_nbd()
        h = nbd.NBD()
        h.set_handle_name(f"test-{name}")
        if not strict:
            h.set_strict_mode(0)
        h.set_request_structured_replies(structured)
        for m in meta:
            h.add_meta_context(m)
        if opt_mode:
            h.set_opt_mode(True)
        h.set_export_name(name)
        h.connect_unix(self.sock(name))
        return h

    def raw(self, name=None, *, tcp=False):
        address = self.tcp_address() if tcp else self.sock(name or self.names()[0])
        return RawClient(address)


# --- a raw NBD client, for what libnbd will not send ------------------------

class OptionError(Exception):
    def __init__(self, reply_type, data=b""):
        super().__init__(f"option reply {reply_name(reply_type)}: {data!r}")
        self.reply_type = reply_type
        self.data = data


def reply_name(reply_type):
    for k, v in globals().items():
        if k.startswith("REP_") and k != "REP_FLAG_ERROR" and v == reply_type:
            return k
    return hex(reply_type)


class RawClient:
    """Speaks the NBD wire protocol directly over a socket."""

    def __init__(self, address, timeout=TIMEOUT):
        self.sock = _connect_socket(address, timeout)
        self.handshake_flags = None
        self.next_handle = 1

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- bytes
    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def wait_closed(self, timeout=TIMEOUT):
        """Read (and discard) until the server closes; returns the bytes read,
        or raises TimeoutError if the connection stays open `timeout` s."""
        got = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"server kept the connection open for {timeout:.0f}s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return bytes(got)
            if not chunk:
                return bytes(got)
            got += chunk

    # -- handshake
    def greeting(self, client_flags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        magic, opt, hflags = struct.unpack(">QQH", self.recv_exact(18))
        assert magic == NBDMAGIC, f"bad NBDMAGIC {magic:#x}"
        assert opt == IHAVEOPT, f"not newstyle: {opt:#x}"
        self.handshake_flags = hflags
        if client_flags is not None:
            self.send(struct.pack(">L", client_flags))
        return hflags

    def send_option(self, option, data=b"", length=None):
        length = len(data) if length is None else length
        self.send(struct.pack(">QLL", IHAVEOPT, option, length) + data)

    def option_reply(self, max_len=1 << 20):
        magic, option, reply_type, length = struct.unpack(">QLLL", self.recv_exact(20))
        assert magic == OPTION_REPLY_MAGIC, f"bad option reply magic {magic:#x}"
        assert length <= max_len, f"option reply of {length} bytes"
        return option, reply_type, self.recv_exact(length)

    def list_exports(self):
        self.send_option(OPT_LIST)
        names = []
        while True:
            option, reply_type, data = self.option_reply()
            assert option == OPT_LIST, f"reply to option {option}, expected NBD_OPT_LIST"
            if reply_type == REP_ACK:
                return names
            if reply_type != REP_SERVER:
                raise OptionError(reply_type, data)
            (n,) = struct.unpack(">L", data[:4])
            names.append(data[4:4 + n].decode())

    def info_or_go(self, option, name, requests=()):
        """NBD_OPT_INFO or NBD_OPT_GO; returns {info type: payload}."""
        bname = name.encode()
        data = struct.pack(">L", len(bname)) + bname + struct.pack(">H", len(requests))
        data += b"".join(struct.pack(">H", r) for r in requests)
        self.send_option(option, data)
        infos = {}
        while True:
            opt, reply_type, payload = self.option_reply()
            assert opt == option, f"reply to option {opt}, expected {option}"
            if reply_type == REP_ACK:
                assert INFO_EXPORT in infos, "NBD_REP_ACK without NBD_INFO_EXPORT"
                return infos
            if reply_type != REP_INFO:
                raise OptionError(reply_type, payload)
            (info,) = struct.unpack(">H", payload[:2])
            infos[info] = payload[2:]

    def go(self, name, requests=(INFO_BLOCK_SIZE,)):
        """NBD_OPT_GO; returns (size, transmission flags, infos)."""
        infos = self.info_or_go(OPT_GO, name, requests)
        size, flags = struct.unpack(">QH", infos[INFO_EXPORT])
        return size, flags, infos

    def export_name(self, name, no_zeroes=True):
        """NBD_OPT_EXPORT_NAME; returns (size, transmission flags)."""
        self.send_option(OPT_EXPORT_NAME, name.encode())
        size, flags = struct.unpack(">QH", self.recv_exact(10))
        if not no_zeroes:
            zeroes = self.recv_exact(124)
            assert zeroes == bytes(124), "the 124 reserved bytes are not zero"
        return size, flags

    # -- transmission (simple replies: do not negotiate structured replies)
    def request(self, cmd, offset=0, length=0, flags=0, payload=b"", handle=None):
        if handle is None:
            handle = self.next_handle
            self.next_handle += 1
        self.send(struct.pack(">LHHQQL", REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload)
        return handle

    def simple_reply(self, data_len=0):
        """(error, handle, data); `data_len` bytes follow a successful read."""
        magic, error, handle = struct.unpack(">LLQ", self.recv_exact(16))
        assert magic == SIMPLE_REPLY_MAGIC, f"bad reply magic {magic:#x}"
        data = self.recv_exact(data_len) if error == 0 and data_len else b""
        return error, handle, data

    def call(self, cmd, offset=0, length=0, flags=0, payload=b""):
        """One request, its reply: (error, data)."""
        handle = self.request(cmd, offset, length, flags, payload)
        data_len = length if cmd == CMD_READ else 0
        error, got_handle, data = self.simple_reply(data_len)
        assert got_handle == handle, f"reply for handle {got_handle}, expected {handle}"
        return error, data


# --- assertions ---------------------------------------------------------------

def expect_error(fn, *errnos, what=""):
    """Call fn(); it must fail with an nbd.Error whose errno is in errnos.
    Returns the errno it got."""
    nbd = require_nbd()
    try:
        result = fn()
    except nbd.Error as e:
        import errno as errno_module  # noqa: PLC0415
        names = [errno_module.errorcode.get(x, str(x)) for x in errnos]
        assert e.errnum in errnos, (
            f"{what}: expected {'/'.join(names)}, got {e.errno or e.errnum} ({e.string})")
        return e.errnum
    raise AssertionError(f"{what}: expected an error, but it succeeded (returned {result!r})")


def pattern(seed, size):
    """Deterministic bytes for a (seed, size): written data that says where it belongs."""
    return random.Random(seed).randbytes(size)


# --- running a test script ----------------------------------------------------

_real_stderr = 2  # pytest captures fd 2 while tests run; run() keeps a copy


def report(text):
    """A measured result: printed, and shown even when pytest captures the
    output of a test that passes."""
    print(text)
    os.write(_real_stderr, f"\n# {text}\n".encode())


@contextlib.contextmanager
def guard(what, timeout=WATCHDOG):
    """If the body runs longer than `timeout` (a request the server never
    answers), print the server logs and every thread's traceback where
    they are seen, stop the servers, remove the temporary directories and
    exit: a hang fails the test file, not the whole suite."""
    fd = _real_stderr

    def expire():
        os.write(fd, f"\nWATCHDOG: {what} still running after {timeout:.0f}s\n".encode())
        for server in _servers:
            for _, log_path in server.procs:
                try:
                    with open(log_path, "rb") as f:
                        tail = f.read()[-6000:]
                except OSError:
                    continue
                os.write(fd, f"--- {log_path} (tail)\n".encode() + tail + b"\n")
        faulthandler.dump_traceback(file=fd, all_threads=True)
        for server in _servers:
            for p, _ in server.procs:
                if p.poll() is None:
                    p.kill()
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
        _remove_tmpdirs()
        os._exit(1)
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    # In case the timer thread cannot run (the GIL held by a stuck call).
    faulthandler.dump_traceback_later(timeout + 30, exit=True, file=fd)
    try:
        yield
    finally:
        timer.cancel()
        faulthandler.cancel_dump_traceback_later()


def pytest_watchdog():
    """An autouse fixture guarding each test: `watchdog = it.pytest_watchdog()`."""
    import pytest  # noqa: PLC0415

    @pytest.fixture(autouse=True)
    def watchdog(request):
        with guard(request.node.nodeid):
            yield
    return watchdog


class _ShortBufferDiffs:
    """A failed `==` between two large buffers (what a read returned against
    what was written) is explained by the first differing offset and the
    lengths. pytest's own explanation diffs them byte by byte with difflib,
    which for a few hundred KiB takes longer than the test's watchdog."""

    @staticmethod
    def pytest_assertrepr_compare(op, left, right):
        buffers = (bytes, bytearray, memoryview)
        if op != "==" or not isinstance(left, buffers) or not isinstance(right, buffers):
            return None
        left, right = bytes(left), bytes(right)
        if len(left) <= 256 and len(right) <= 256:
            return None
        first = next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))
        return [f"buffers of {len(left)} and {len(right)} bytes differ",
                f"first difference at byte {first}: "
                f"{left[first:first + 16].hex()} against {right[first:first + 16].hex()}"]


def run(test_file):
    """Run the test functions of `test_file` with pytest; exit code for ctest."""
    global _real_stderr
    require_nbd()
    try:
        import pytest  # noqa: PLC0415
    except ImportError:
        skip(f"pytest is not installed for {sys.executable}")
    _real_stderr = os.dup(2)
    # Killed by a time limit: still stop the servers and clean up (atexit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = [test_file, "-v", "-p", "no:cacheprovider", "--rootdir", HERE,
            "-o", "console_output_style=classic"]
    args += sys.argv[1:]
    code = pytest.main(args, plugins=[_ShortBufferDiffs()])
    return 1 if code not in (0, 77) else code


# --- command line for lib.sh --------------------------------------------------

def _main(argv):
    if len(argv) >= 3 and argv[0] == "nbdkit-argv":
        spec, sock = argv[1], argv[2] or None
        listen = argv[3] if len(argv) > 3 else None
        name, cmd = nbdkit_argv(spec, sock=sock, listen=listen)
        sys.stdout.write("\0".join([name] + cmd) + "\0")
        return 0
    if len(argv) >= 3 and argv[0] == "wait-ready":
        pid = int(argv[1])
        address = argv[2]
        if ":" in address and not address.startswith("/"):
            host, _, port = address.rpartition(":")
            address = (host, int(port))
        timeout = float(argv[3]) if len(argv) > 3 else TIMEOUT

        def alive():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            # A zombie is dead too.
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
            return True
        try:
            wait_ready(address, alive, timeout)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
