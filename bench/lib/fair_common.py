"""Shared helpers of bench/fairness, bench/limits and bench/sharing.

Starting iobandd (and the peer servers) in a scratch directory, driving fio
with the nbd engine, reading fio's per-second logs, sampling the daemon's
status, measuring CPU, describing the machine, and drawing with gnuplot.
Standard library only; runs under /usr/bin/python3.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The binaries: build/bin, or the directory in $IOBAND_BIN_DIR (e.g. a build
# directory of one's own: IOBAND_BIN_DIR=build-bench/bin bench/fairness).
BIN_DIR = os.path.abspath(os.environ.get("IOBAND_BIN_DIR") or os.path.join(REPO, "build", "bin"))
IOBANDD = os.path.join(BIN_DIR, "iobandd")
IOBANDCTL = os.path.join(BIN_DIR, "iobandctl")
CLK_TCK = os.sysconf("SC_CLK_TCK")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SECTOR = 512


def log(*parts):
    """Progress goes to stderr; tables go to stdout."""
    print(*parts, file=sys.stderr, flush=True)


def die(message):
    log("error: " + message)
    sys.exit(2)


def set_bin(path):
    """Use iobandd and iobandctl from the directory `path` (a script's --bin)."""
    global BIN_DIR, IOBANDD, IOBANDCTL
    BIN_DIR = os.path.abspath(path)
    IOBANDD = os.path.join(BIN_DIR, "iobandd")
    IOBANDCTL = os.path.join(BIN_DIR, "iobandctl")


def need(*programs):
    missing = [p for p in programs if not (os.path.exists(p) if os.sep in p else shutil.which(p))]
    if missing:
        die("missing: " + ", ".join(missing) + " (build with `ninja -C build iobandd iobandctl`; "
            "Debian packages fio, qemu-utils, nbdkit, gnuplot-nox)")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------


def _first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def block_device_of(path):
    """The whole-disk block device under `path` (e.g. vda), or None for tmpfs."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sys_path = "/sys/dev/block/%d:%d" % (major, minor)
    if not os.path.exists(sys_path):
        return None
    real = os.path.realpath(sys_path)
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    return os.path.basename(real)


def disk_description(path):
    dev = block_device_of(path)
    if dev is None:
        return "tmpfs (memory)"
    q = "/sys/block/%s/queue/" % dev

    def read(name, default="?"):
        try:
            with open(q + name) as f:
                return f.read().strip()
        except OSError:
            return default

    try:
        with open("/sys/block/%s/size" % dev) as f:
            size = int(f.read()) * SECTOR
    except OSError:
        size = 0
    sched = read("scheduler")
    if "[" in sched:
        sched = sched[sched.index("[") + 1:sched.index("]")]
    kind = "rotational" if read("rotational") == "1" else "non-rotational"
    tags = "?"
    mq = "/sys/block/%s/mq" % dev
    if os.path.isdir(mq):
        queues = sorted(os.listdir(mq))
        try:
            with open(os.path.join(mq, queues[0], "nr_tags")) as f:
                tags = "%d queue(s) x %s tags" % (len(queues), f.read().strip())
        except (OSError, IndexError):
            pass
    return "/dev/%s, %.0f GiB, %s, scheduler %s, %s" % (dev, size / GiB, kind, sched, tags)


def machine_info(paths):
    """Facts for the report header: date, nproc, memory, kernel, disks, tools."""
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"),
        "memory": "%.1f GiB" % (mem_kib / (1 << 20)),
        "kernel": os.uname().release,
        "load": "%.2f %.2f %.2f" % os.getloadavg(),
        "fio": _first_line(["fio", "--version"]),
    }
    for label, path in paths.items():
        info["storage " + label] = "%s: %s" % (path, disk_description(path))
    return info


def print_machine(info, command):
    print("command: " + command)
    for key, value in info.items():
        print("%-10s %s" % (key + ":", value))
    print()


class CpuMeter:
    """Whole-machine busy fraction and one process's CPU over an interval."""

    def __init__(self, pid=None):
        self.pid = pid
        self.t0 = time.monotonic()
        self.stat0 = self._stat()
        self.proc0 = self._proc()

    @staticmethod
    def _stat():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    def _proc(self):
        if self.pid is None:
            return 0
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return int(parts[11]) + int(parts[12])
        except (OSError, IndexError):
            return 0

    def read(self):
        """(machine busy 0..1, process CPU seconds per wall second)."""
        total, idle = self._stat()
        dt_total = total - self.stat0[0]
        busy = 1.0 - (idle - self.stat0[1]) / dt_total if dt_total > 0 else 0.0
        wall = time.monotonic() - self.t0
        proc = (self._proc() - self.proc0) / CLK_TCK / wall if wall > 0 and self.pid else 0.0
        return busy, proc


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


def wait_for_socket(path, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return True
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    return False


class Server:
    """A server process serving NBD on a Unix socket."""

    def __init__(self, name, argv, sock, workdir, env=None):
        self.name, self.argv, self.sock, self.workdir = name, argv, sock, workdir
        self.proc = None
        self.env = env

    def start(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.logfile = open(os.path.join(self.workdir, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        if not wait_for_socket(self.sock, self.proc):
            self.stop()
            with open(os.path.join(self.workdir, self.name + ".log"), "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            die("%s did not start: %s\n%s" % (self.name, " ".join(self.argv), tail))
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "logfile", None):
            self.logfile.close()
            self.logfile = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def uri(self, export):
        return "nbd+unix:///%s?socket=%s" % (export, self.sock)


class Iobandd(Server):
    """iobandd in its own state directory, with iobandctl on its control socket."""

    def __init__(self, workdir, extra_args=()):
        state = os.path.join(workdir, "iobandd-state")
        os.makedirs(state, exist_ok=True)
        self.control = os.path.join(workdir, "ioband.ctl")
        sock = os.path.join(workdir, "ioband.sock")
        argv = [IOBANDD, "--state-dir", state, "--socket", sock, "--control", self.control] + list(extra_args)
        super().__init__("iobandd", argv, sock, workdir)

    def start(self):
        super().start()
        deadline = time.monotonic() + 10
        while not os.path.exists(self.control) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def ctl(self, *args, stdin=None, check=True):
        r = subprocess.run([IOBANDCTL, "--control", self.control] + [str(a) for a in args],
                           input=stdin, capture_output=True, text=True)
        if check and r.returncode != 0:
            die("iobandctl %s: %s" % (" ".join(map(str, args)), r.stderr.strip()))
        return r.stdout

    def create(self, name, path, group_id, size=None):
        size = size if size is not None else os.path.getsize(path)
        self.ctl("create", name, stdin="0 %d ioband %s %d\n" % (size // SECTOR, path, group_id))

    def remove_all(self):
        table = json.loads(self.ctl("--json", "table"))
        for dev in table["data"]["devices"]:
            self.ctl("remove", "--force", dev["name"], check=False)

    def message(self, name, verb, *args):
        return self.ctl("message", name, 0, verb, *args)

    def status(self):
        return json.loads(self.ctl("--json", "status"))["data"]["devices"]


class StatusSampler(threading.Thread):
    """Samples iobandd's status once a second: per device queue length, in
    flight, and request counters -- the server's own view of a run."""

    def __init__(self, daemon, interval=1.0):
        super().__init__(daemon=True)
        self.d, self.interval = daemon, interval
        self.samples = []  # (t, {device: {queued, in_flight, requests}})
        self._halt = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self._halt.is_set():
            try:
                devs = self.d.status()
            except (SystemExit, ValueError, KeyError):
                break
            snap = {"_sockets": socket_queues(self.d.sock)}
            for dev in devs:
                q = f = n = 0
                for g in dev["groups"]:
                    q += g.get("queue_length", 0)
                    f += g.get("in_flight", 0)
                    n += g.get("read_requests", 0) + g.get("write_requests", 0)
                snap[dev["name"]] = {"queued": q, "in_flight": f, "requests": n,
                                     "io_window": dev.get("io_window", 0)}
            self.samples.append((time.monotonic() - t0, snap))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)
        return self.samples


class GroupSampler(threading.Thread):
    """Samples iobandd's status once a second and keeps each group's
    cumulative counters: {(device, group id): (requests, sectors)} with the
    time of the sample. windows() turns them into per-window differences."""

    def __init__(self, daemon, interval=1.0):
        super().__init__(daemon=True)
        self.d, self.interval = daemon, interval
        self.samples = []  # (monotonic time, {(device, id): (requests, sectors)})
        self._halt = threading.Event()

    def snapshot(self):
        t0 = time.monotonic()
        try:  # quietly: the daemon may be gone at the end of a run
            devs = json.loads(self.d.ctl("--json", "status", check=False))["data"]["devices"]
        except (ValueError, KeyError, TypeError):
            return None
        t1 = time.monotonic()
        snap = {}
        for dev in devs:
            for g in dev["groups"]:
                snap[(dev["name"], g["id"])] = (g.get("read_requests", 0) + g.get("write_requests", 0),
                                                g.get("read_sectors", 0) + g.get("write_sectors", 0))
        return ((t0 + t1) / 2, snap)

    def begin(self):
        """A first sample now (before the clients start), then one a second."""
        first = self.snapshot()
        if first:
            self.samples.append(first)
        self.t0 = time.monotonic()
        self.start()
        return self

    def run(self):
        k = 1
        while not self._halt.wait(max(0.0, self.t0 + k * self.interval - time.monotonic())):
            s = self.snapshot()
            if s is None:
                break
            self.samples.append(s)
            k += 1

    def stop(self):
        self._halt.set()
        self.join(timeout=5)
        last = self.snapshot()
        if last:
            self.samples.append(last)
        return self.samples

    def windows(self, t_from=None, t_to=None):
        """[(t0, t1, {key: (requests, sectors)})] between consecutive samples,
        only windows inside [t_from, t_to] (monotonic times)."""
        out = []
        for (ta, a), (tb, b) in zip(self.samples, self.samples[1:]):
            if (t_from is not None and ta < t_from) or (t_to is not None and tb > t_to):
                continue
            out.append((ta, tb, {k: (b[k][0] - a[k][0], b[k][1] - a[k][1]) for k in b if k in a}))
        return out


def socket_queues(path):
    """Server-side ends of the NBD connections on Unix socket `path` (ss -x):
    a list of (Recv-Q, Send-Q) in bytes -- requests the server has not read
    yet, and replies the client has not read yet."""
    try:
        out = subprocess.run(["ss", "-xn", "state", "connected"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    queues = []
    for line in out.splitlines():
        parts = line.split()
        if path in parts:
            i = parts.index(path)
            try:
                queues.append((int(parts[i - 2]), int(parts[i - 1])))
            except (ValueError, IndexError):
                pass
    return queues


def summarize_samples(samples, devices, io_limit):
    """Mean in flight over the device group, the in-flight window it applied
    (io_limit, or the learned one of io_limit auto), the share of samples with
    the window full, and per device how often its queue was empty."""
    rows = [s for _, s in samples if all(d in s for d in devices)]
    sockets = [s.get("_sockets", []) for s in rows]
    rows = rows[1:-1] if len(rows) > 3 else rows  # drop the ramp-up and the tail
    if not rows:
        return None
    total_flight = [sum(s[d]["in_flight"] for d in devices) for s in rows]
    window = [s[devices[0]].get("io_window") or io_limit for s in rows]
    out = {
        "samples": len(rows),
        "mean_in_flight": statistics.mean(total_flight),
        "mean_window": statistics.mean(window),
        "window_full": sum(1 for x, w in zip(total_flight, window) if x >= w) / len(rows),
    }
    if any(sockets):
        out["unread_requests_kib"] = statistics.mean(sum(q[0] for q in x) for x in sockets) / 1024
        out["unread_replies_kib"] = statistics.mean(sum(q[1] for q in x) for x in sockets) / 1024
    for d in devices:
        out[d + ".queue_empty"] = sum(1 for s in rows if s[d]["queued"] == 0) / len(rows)
        out[d + ".mean_queued"] = statistics.mean(s[d]["queued"] for s in rows)
        out[d + ".mean_in_flight"] = statistics.mean(s[d]["in_flight"] for s in rows)
    return out


# --------------------------------------------------------------------------
# fio
# --------------------------------------------------------------------------


def fio_run(workdir, tag, jobs, runtime, common=None, timeout_extra=60):
    """Runs one fio process with one job per entry of `jobs` (dicts of fio
    options; 'name' required). Every job writes a 1-second iops log.
    Returns a list of per-job results: ios, iops, lat percentiles (us), and
    'per_second' (list of I/Os in each whole second)."""
    return FioProc(workdir, tag, jobs, runtime, common=common, gated=False).collect(timeout_extra)


class FioProc:
    """One fio process running `jobs` (see fio_run). With gated=True it is
    started in its own session and process group and waits on stdin before
    it execs fio: the caller can attach its process group (pid) to an ioband
    group first, start several at once and then release them together with
    go(). user: run fio as this uid (and gid) via setpriv; env: extra
    environment; defaults=False leaves out the [global] options fio_run adds
    (norandommap, randrepeat=0) for job files that must be exactly a user's
    command line."""

    def __init__(self, workdir, tag, jobs, runtime, common=None, gated=True, user=None, env=None, defaults=True):
        self.runtime, self.tag = runtime, tag
        lines = ["[global]", "time_based=1", "runtime=%d" % runtime, "log_avg_msec=1000", "lat_percentiles=1",
                 "percentile_list=50:99:99.9", "group_reporting=0"]
        if defaults:
            lines[2:2] = ["norandommap=1", "randrepeat=0"]
        for k, v in (common or {}).items():
            lines.append("%s=%s" % (k, v))
        self.prefixes = []
        for i, job in enumerate(jobs):
            prefix = os.path.join(workdir, "%s.%d" % (tag, i))
            for old in _glob_logs(prefix):
                os.unlink(old)
            self.prefixes.append(prefix)
            lines.append("[%s]" % job["name"])
            for k, v in job.items():
                if k != "name":
                    lines.append("%s=%s" % (k, v) if v is not None else k)
            lines.append("write_iops_log=%s" % prefix)
        self.jobfile = os.path.join(workdir, tag + ".fio")
        with open(self.jobfile, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.out = os.path.join(workdir, tag + ".json")
        if os.path.exists(self.out):
            os.unlink(self.out)
        argv = ["fio", "--output-format=json", "--output=" + self.out, self.jobfile]
        if gated:
            argv = ["sh", "-c", 'read go; exec "$@"', "sh"] + argv
        if user is not None:
            argv = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups"] + argv
        full_env = dict(os.environ, **env) if env else None
        self.gated = gated
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=gated, env=full_env)

    @property
    def pid(self):
        return self.proc.pid

    def go(self):
        if self.gated and self.proc.stdin:
            try:
                self.proc.stdin.write("go\n")
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.stdin = None

    def collect(self, timeout_extra=60):
        try:
            stdout, stderr = self.proc.communicate(timeout=self.runtime + timeout_extra)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
        try:
            with open(self.out) as f:
                text = f.read()
            data = json.loads(text[text.index("{"):])
        except (OSError, ValueError):
            die("fio failed (%s): %s %s" % (self.jobfile, stdout[-1500:], stderr[-1500:]))
        results = []
        for job, prefix in zip(data["jobs"], self.prefixes):
            if job.get("error"):
                die("fio job %s failed: error %s (%s)" % (job["jobname"], job["error"], stderr[-800:]))
            ios = job["read"]["total_ios"] + job["write"]["total_ios"]
            secs = job["job_runtime"] / 1000.0 if job.get("job_runtime") else self.runtime
            res = {"name": job["jobname"], "ios": ios, "seconds": secs, "iops": ios / secs if secs else 0.0,
                   "bytes": job["read"]["io_bytes"] + job["write"]["io_bytes"],
                   "per_second": per_second(_glob_logs(prefix), self.runtime)}
            if data.get("timestamp_ms"):  # the report's time: the end of the run (wall clock, s)
                res["end_wall"] = data["timestamp_ms"] / 1000.0
                res["start_wall"] = res["end_wall"] - secs
            res.update(latency_of(job))
            results.append(res)
        return results


def _glob_logs(prefix):
    d, base = os.path.split(prefix)
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith(base + "_iops.") and n.endswith(".log"))


def per_second(paths, runtime):
    """I/Os per whole second from fio's averaged iops logs (log_avg_msec=1000):
    lines `msec, iops, ddir, bs, ...`, one per direction per window. Window k
    (1-based) ends at about k*1000 ms; only whole windows inside the run."""
    by_window = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = [p.strip() for p in line.split(",")]
                if len(parts) < 3:
                    continue
                t, value = int(parts[0]), int(parts[1])
                k = int(round(t / 1000.0))
                if k < 1 or k > runtime:
                    continue
                by_window[k] = by_window.get(k, 0) + value
    # The last window is cut short by the end of the run: left out.
    return [by_window.get(k) for k in range(1, runtime)] if by_window else []


def latency_of(job):
    """p50/p99 of total latency (us) over reads and writes (fio's lat_ns;
    the direction with more I/Os when both are present)."""
    best = None
    for d in ("read", "write"):
        part = job[d]
        if part["total_ios"] and (best is None or part["total_ios"] > best["total_ios"]):
            best = part
    if not best:
        return {"p50": None, "p99": None}
    pct = best.get("lat_ns", {}).get("percentile") or best.get("clat_ns", {}).get("percentile") or {}

    def get(p):
        for key, value in pct.items():
            if abs(float(key) - p) < 1e-6:
                return value / 1000.0
        return None

    return {"p50": get(50.0), "p99": get(99.0)}


def fill_random(path, size, log_prefix=""):
    """A file of `size` bytes of random data (not sparse)."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return False
    log("%screating %s (%d MiB of random data)" % (log_prefix, path, size // MiB))
    tmp = path + ".tmp"
    chunk = 4 * MiB
    with open(tmp, "wb") as out, open("/dev/urandom", "rb") as rnd:
        left = size
        while left:
            n = min(chunk, left)
            out.write(rnd.read(n))
            left -= n
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, path)
    return True


def drop_cache(path):
    """fdatasync and drop `path` from the page cache (only that file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        pass


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def pass_miss(ok):
    return "PASS" if ok else "MISS"


def write_csv(path, header, rows, comment=None):
    with open(path, "w") as f:
        if comment:
            for line in comment.splitlines():
                f.write("# " + line + "\n")
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join("" if v is None else (("%.3f" % v) if isinstance(v, float) else str(v)) for v in row) + "\n")


def gnuplot(script, workdir):
    path = os.path.join(workdir, "plot.gp")
    with open(path, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", path], capture_output=True, text=True)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr.strip()[-1000:])
        return False
    return True


def scratch_dir(prefix):
    return tempfile.mkdtemp(prefix=prefix)
