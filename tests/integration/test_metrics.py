#!/usr/bin/python3
"""iobandd --http: what an operator sees, checked with real tools.

Two ioband devices (d1, d2) of one device group on images in /dev/shm, read
by `fio --ioengine=nbd` at fixed rates (--rate_iops), so the rates every
view shows can be compared with fio's own count:

- test_scrape_under_load_passes_promtool: a /metrics scrape taken under load
  passes `promtool check metrics` and has the series an operator needs.
- test_prometheus_server_rates_match_fio: a real Prometheus server (started
  here on a loopback port with its own config and data directory) scrapes
  every second while fio runs; from its query API, the counter's increase
  from the scrape before fio's first read to the scrape after its last is
  fio's total, the increase between two scrapes during the run is fio's
  count between the same instants, and rate() over a window inside the run
  is fio's rate between the samples rate() used, each within 5 %.
- test_top_batch_json_rates_match_fio: `iobandctl top --batch 3 --json`
  under the same load against fio's count over top's own intervals.
- test_top_screen_in_tmux: the ncurses screen, driven with tmux send-keys and
  read with capture-pane, shows every device and group and sorts.
- test_http_bad_input: 404, 405, HEAD; stuck HTTP clients and slow readers
  stall neither other scrapes nor NBD requests.
- test_bad_http_option_stops_the_start: bad addresses, a port in use, a
  path that is not a socket: the start stops with the reason.
- test_http_on_a_unix_socket, test_http_on_ipv6_loopback: `--http unix:PATH`
  read with `curl --unix-socket`, and `--http [::1]:PORT`.
- test_dashboard_assets: / and /chart.js (Debian's Chart.js) are served.
"""

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
IMAGE = 16 * MiB
RATES = {"d1": 1500, "d2": 600}  # fio --rate_iops per device
TOLERANCE = 0.05

watchdog = it.pytest_watchdog()


def http_get(url, method="GET", timeout=10):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def daemon():
    it.require_tools("fio")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmpdir = tempfile.mkdtemp(prefix="ioband-metrics.", dir=base)
    it._tmpdirs.append(tmpdir)
    port = it.free_tcp_port()
    with ct.Daemon(tmpdir=tmpdir, args=["--http", f"127.0.0.1:{port}"]) as d:
        d.http = f"http://127.0.0.1:{port}"
        for name in RATES:
            d.create(name, it.random_file(d.path(f"{name}.img"), IMAGE, seed=1), 1)
        d.message("d1", "weight", 300)
        d.message("d2", "limit", "iops-total=5000")
        yield d


class Fio:
    """fio readers of d1 and d2 at RATES (--rate_iops), in the background, for
    `seconds`. Besides its JSON report, each fio logs every completed read
    with a Unix timestamp in milliseconds (--write_iops_log without
    --log_avg_msec, --log_unix_epoch): fio's own count over any window, so
    the views can be compared with it over exactly the instants they cover,
    whether or not a loaded machine let fio keep its rate."""

    def __init__(self, d, seconds):
        self.procs = {}
        self.logs = {}
        self.seconds = seconds
        for name, rate in RATES.items():
            prefix = os.path.join(d.dir, f"fio-{name}-{time.monotonic_ns()}")
            self.logs[name] = prefix + "_iops.1.log"
            argv = ct.fio_argv(d.uri(name), name, "--rw=randread", "--bs=4k", "--iodepth=4", "--time_based",
                               f"--runtime={seconds}", f"--rate_iops={rate}", "--direct=1",
                               f"--write_iops_log={prefix}", "--log_unix_epoch=1")
            self.procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                preexec_fn=it._pdeathsig)

    def wait_running(self, d):
        """Until both devices have served reads since this fio started."""
        def reads():
            stats = json.loads(http_get(d.http + "/api/stats")[2])
            return {dev["name"]: dev["groups"][0]["observation"]["ops"].get("read", {}).get("requests", 0)
                    for dev in stats["devices"] if dev["name"] in RATES}
        before = reads()
        deadline = time.monotonic() + it.TIMEOUT
        while True:
            now = reads()
            if min(n - before.get(name, 0) for name, n in now.items()) > 50:
                return
            assert time.monotonic() < deadline, f"fio did not start: {before} then {now}"
            time.sleep(0.1)

    def results(self):
        """{device: {"ios", "iops", "times"}}: fio's totals and the Unix time of each completed read."""
        out = {}
        for name, proc in self.procs.items():
            stdout, stderr = proc.communicate(timeout=self.seconds + it.TIMEOUT)
            assert proc.returncode == 0, f"fio {name} exited {proc.returncode}: {stderr[-2000:]}"
            job = ct.fio_json(stdout)["jobs"][0]
            times = []
            with open(self.logs[name]) as f:
                for line in f:
                    ms, count, direction = (int(field) for field in line.split(",")[:3])
                    assert direction == 0, line  # reads only
                    times.extend([ms / 1000] * count)
            # The log and the report are fio's one count, seen two ways.
            assert len(times) == job["read"]["total_ios"], (name, len(times), job["read"]["total_ios"])
            out[name] = {"ios": job["read"]["total_ios"], "iops": job["read"]["iops"], "times": times}
        return out


def count_between(times, start, end):
    """fio's reads completed after `start` and by `end` (Unix seconds).
    Its log has millisecond stamps: a read at most 1 ms from an end may
    fall on either side, a few reads in thousands."""
    return sum(1 for t in times if start < t <= end)


def series(text):
    """The samples of a Prometheus text exposition: {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = frozenset()
        if rest:
            pairs = [p for p in rest.rstrip("}").split('",') if p]
            labels = frozenset(tuple(p.rstrip('"').split('="', 1)) for p in pairs)
        out[(name, labels)] = float(value)
    return out


def value(samples, name, **labels):
    want = frozenset(labels.items())
    return samples[(name, want)]


def test_scrape_under_load_passes_promtool(daemon):
    it.require_tools("promtool")
    fio = Fio(daemon, 4)
    fio.wait_running(daemon)
    status, headers, body = http_get(daemon.http + "/metrics")
    fio.results()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, f"promtool check metrics: {check.stdout.decode()} {check.stderr.decode()}"
    samples = series(body.decode())
    # Under load: requests were counted, per device and group, with their configuration beside them.
    assert value(samples, "ioband_requests_total", device="d1", group="default", op="read") > 50
    assert value(samples, "ioband_requests_total", device="d2", group="default", op="read") > 50
    assert value(samples, "ioband_group_weight", device="d1", group="default") == 300
    assert value(samples, "ioband_group_weight_share", device="d1", group="default") == pytest.approx(0.75)
    assert value(samples, "ioband_device_limit_requests_per_second", device="d2", direction="total") == 5000
    assert value(samples, "ioband_request_duration_seconds_count", device="d1", group="default", op="read") > 50
    assert value(samples, "ioband_connections", device="d1") == 1
    assert [v for (n, _), v in samples.items() if n == "ioband_build_info"] == [1]
    for reason in ("weight", "limit", "window"):
        assert ("ioband_held_seconds_total", frozenset({("device", "d1"), ("group", "default"),
                                                        ("reason", reason)})) in samples


def prometheus_query(base, query, at=None):
    params = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = base + "/api/v1/query?" + urllib.parse.urlencode(params)
    status, _, body = http_get(url)
    reply = json.loads(body)
    assert status == 200 and reply["status"] == "success", reply
    return {r["metric"].get("device"): float(r["value"][1]) for r in reply["data"]["result"]}


def test_prometheus_server_rates_match_fio(daemon):
    it.require_tools("prometheus")
    work = tempfile.mkdtemp(prefix="prometheus.", dir=daemon.dir)
    port = it.free_tcp_port()
    target = daemon.http.removeprefix("http://")
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        f.write(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"scrape_configs:\n  - job_name: ioband\n    static_configs:\n      - targets: ['{target}']\n")
    base = f"http://127.0.0.1:{port}"
    with open(os.path.join(work, "log"), "wb") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=it._pdeathsig)
    try:
        deadline = time.monotonic() + it.TIMEOUT
        while True:
            try:
                if http_get(base + "/-/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert prometheus.poll() is None and time.monotonic() < deadline, open(f"{work}/log").read()[-3000:]
            time.sleep(0.2)
        while prometheus_query(base, 'up{job="ioband"} == 1') == {}:  # a scrape before fio starts
            assert time.monotonic() < deadline, "Prometheus scraped nothing"
            time.sleep(0.2)
        started = time.time()
        fio = Fio(daemon, 10)
        results = fio.results()
        time.sleep(2.5)  # a scrape after fio's last read
        ended = time.time()
        # Prometheus's own samples (scrape time, value) from before fio's
        # first read to after its last.
        def raw(query):
            params = urllib.parse.urlencode({"query": f"{query}[{ended - started + 5:.0f}s]", "time": f"{ended:.3f}"})
            reply = json.loads(http_get(f"{base}/api/v1/query?{params}")[2])
            return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in reply["data"]["result"]]

        samples = {m["device"]: dict(values) for m, values in raw('ioband_requests_total{op="read"}')
                   if m["group"] == "default"}
        # Every scrape's time: a group that has served nothing has no
        # counter yet, which counts as 0 (a scrape of d1 and d2 before fio
        # may carry none if no earlier test read them).
        (_, scrape_times), = raw('up{job="ioband"}')
        window = 6.0  # wide: a scrape answered late by a loaded machine moves the rate less
        for name, result in results.items():
            times = result["times"]
            scrapes = [(t, samples[name].get(t, 0.0)) for t, up in scrape_times if up == 1]
            first, last = times[0], times[-1]
            # The whole run: the increase from the last scrape before fio's
            # first read to the first after its last is fio's total.
            (tb, vb), (ta, va) = [s for s in scrapes if s[0] < first][-1], [s for s in scrapes if s[0] > last][0]
            it.log(f"{name}: fio completed {result['ios']} reads ({result['iops']:.0f}/s), Prometheus counted "
                   f"{va - vb:.0f} between its scrapes at +{tb - started:.1f}s and +{ta - started:.1f}s")
            assert va - vb == pytest.approx(result["ios"], rel=TOLERANCE)
            # Inside the run: the increase between two scrapes against fio's
            # count between the same instants.
            busy = [s for s in scrapes if first + 0.5 < s[0] < last]
            assert len(busy) >= 6, f"Prometheus scraped {len(busy)} times during fio's {fio.seconds}s: {scrapes}"
            (t0, v0), (t1, v1) = busy[0], busy[-1]
            counted = count_between(times, t0, t1)
            it.log(f"{name}: between scrapes at +{t0 - started:.1f}s and +{t1 - started:.1f}s fio "
                   f"completed {counted}, Prometheus counted {v1 - v0:.0f}")
            assert counted > 0.2 * RATES[name] * (t1 - t0), "fio hardly ran between the scrapes"
            assert v1 - v0 == pytest.approx(counted, rel=TOLERANCE)
            # rate() over a window inside the run: it takes the slope between
            # the first and last samples in its window (and extrapolates it
            # to the window's ends), so fio's rate between the same samples.
            assert t1 - window > first, "the rate() window starts before fio's first read"
            rate = prometheus_query(base, f'sum by (device) (rate(ioband_requests_total{{op="read"}}[{window:.0f}s]))',
                                    at=t1)[name]
            inside = [s for s in scrapes if t1 - window < s[0] <= t1]
            fio_rate = count_between(times, inside[0][0], inside[-1][0]) / (inside[-1][0] - inside[0][0])
            it.log(f"{name}: rate() {rate:.0f}/s, fio's {fio_rate:.0f}/s over the same samples")
            assert rate == pytest.approx(fio_rate, rel=TOLERANCE)
        middle = t1
        # Every query of docs/grafana-dashboard.json is valid PromQL over these metrics, and the
        # main panels have data (the limit and error panels may rightly be empty here).
        with open(os.path.join(it.SOURCE, "docs", "grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "5s").replace("$device", ".*")
                result = prometheus_query(base, expr, at=middle)
                if target["refId"] == "A" and "errors" not in panel["title"].lower():
                    assert result, f"{panel['title']}: {expr} returned nothing"
                if panel["title"].startswith("Share") and target["refId"] == "B":
                    # The configured share among the groups with I/O: weights 300 and 100.
                    assert result == pytest.approx({"d1": 0.75, "d2": 0.25}), (expr, result)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_top_batch_json_rates_match_fio(daemon):
    with idle_group(daemon):
        fio = Fio(daemon, 7)
        fio.wait_running(daemon)
        top = subprocess.run([ct.IOBANDCTL, "--control", daemon.control, "top", "--batch", "3", "--json"],
                             capture_output=True, text=True, timeout=it.TIMEOUT)
        results = fio.results()
    assert top.returncode == 0, top.stderr
    samples = [json.loads(line) for line in top.stdout.splitlines()]
    assert len(samples) == 3
    # The three intervals together (top's own clock: each sample's time
    # and the interval before it), against fio's reads in the same span.
    start, end = samples[0]["time"] - samples[0]["interval_s"], samples[-1]["time"]
    for name, result in results.items():
        times = result["times"]
        rows = [[g for g in s["groups"] if g["device"] == name and g["group"] == "default"][0] for s in samples]
        iops = sum(r["iops"] * s["interval_s"] for r, s in zip(rows, samples)) / (end - start)
        counted = count_between(times, start, end)
        it.log(f"{name}: top {iops:.0f}/s, fio {counted / (end - start):.0f}/s over top's {end - start:.2f}s "
               f"(fio's whole run {result['iops']:.0f}/s; top began +{start - times[0]:.2f}s after fio's first read "
               f"and ended {times[-1] - end:.2f}s before its last)")
        assert counted > 0.2 * RATES[name] * (end - start), "fio hardly ran while top sampled"
        assert iops == pytest.approx(counted / (end - start), rel=TOLERANCE)
        assert rows[-1]["mib_per_s"] == pytest.approx(rows[-1]["iops"] * 4096 / MiB, rel=0.01)
        assert rows[-1]["p99_ms"] is not None
    shares = {(g["device"], g["group"]): g for g in samples[-1]["groups"]}
    # Configured shares among the groups with I/O (weights 300 and 100; the
    # idle group's 100 left out), and the idle group's if it came now.
    assert shares[("d1", "default")]["share_configured"] == pytest.approx(0.75)
    assert shares[("d2", "default")]["share_configured"] == pytest.approx(0.25)
    assert shares[("d2", "4242")]["share_configured"] == pytest.approx(0.2)
    assert shares[("d2", "4242")]["iops"] == 0 and shares[("d2", "4242")]["share_delivered"] == 0
    delivered = {name: count_between(result["times"], samples[-1]["time"] - samples[-1]["interval_s"],
                                     samples[-1]["time"]) for name, result in results.items()}
    assert shares[("d1", "default")]["share_delivered"] == pytest.approx(delivered["d1"] / sum(delivered.values()),
                                                                         abs=0.02)
    assert shares[("d2", "default")]["limits"] == "iops-total=5000"


def tmux(*args):
    return subprocess.run(["tmux", "-L", f"ioband-test-{os.getpid()}"] + list(args), capture_output=True, text=True,
                          timeout=30)


def rows_on_screen(text):
    return [line.split()[:2] for line in text.splitlines() if line.startswith(("d1 ", "d2 "))]


@contextlib.contextmanager
def idle_group(d):
    """A third group, 4242 on d2, with no I/O: d2 classifies by uid, and fio
    (root) stays in d2's default group."""
    d.message("d2", "type", "user")
    d.message("d2", "attach", 4242)
    try:
        yield
    finally:
        d.message("d2", "detach", 4242)
        d.message("d2", "type", "none")


def test_top_screen_in_tmux(daemon):
    it.require_tools("tmux")
    with idle_group(daemon):
        top_screen(daemon)


def top_screen(daemon):
    fio = Fio(daemon, 8)
    try:
        command = f"{ct.IOBANDCTL} --control {daemon.control} top"
        assert tmux("new-session", "-d", "-x", "200", "-y", "30", "-s", "top", command).returncode == 0

        def screen_after(keys, marker, rows):
            """The screen once it shows `marker` and exactly `rows` (device, group) in that order."""
            if keys:
                tmux("send-keys", "-t", "top", keys)
            deadline = time.monotonic() + 10
            while True:
                text = tmux("capture-pane", "-p", "-t", "top").stdout
                if (marker in text and rows_on_screen(text) == rows) or time.monotonic() > deadline:
                    return text
                time.sleep(0.2)

        d1, d2, idle = ["d1", "default"], ["d2", "default"], ["d2", "4242"]
        # By IOPS (the default), once rates are known: d1 (1500/s), d2 (600/s), then the idle group.
        steps = [(None, "sort: iops - ", [d1, d2, idle]),
                 ("r", "sort: iops (reversed)", [idle, d2, d1]),
                 ("n", "sort: name (reversed)", [d2, idle, d1]),  # "default" after "4242"
                 ("r", "sort: name - ", [d1, idle, d2]),
                 ("w", "sort: weight - ", [d1, d2, idle])]  # 300, then 100 and 100 in the order before
        for keys, marker, rows in steps:
            text = screen_after(keys, marker, rows)
            assert marker in text and rows_on_screen(text) == rows, (keys, marker, rows, text)
        assert "3 groups" in text, text
        tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 10
        while tmux("has-session", "-t", "top").returncode == 0:
            assert time.monotonic() < deadline, "top did not quit on q"
            time.sleep(0.1)
    finally:
        tmux("kill-server")
        fio.results()


def test_http_bad_input(daemon):
    it.require_tools("curl")
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = http_get(daemon.http + "/metrics", method=method)
        assert status == 405 and "GET" in headers.get("Allow", ""), (method, status, body)
    status, _, body = http_get(daemon.http + "/no/such/page")
    assert status == 404 and b"not found" in body
    status, headers, body = http_get(daemon.http + "/metrics", method="HEAD")
    assert status == 200 and body == b""
    status, _, body = http_get(daemon.http + "/api/stats?after=soon")
    assert status == 400 and b"after=soon: expected a Unix time in seconds" in body
    # ?after= waits for its time without holding a thread: four of them (as
    # many as the listener has threads) and a scrape beside them.
    waiting = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                 f"{daemon.http}/api/stats?after={time.time() + 1.5:.3f}"],
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(0.3)
    started = time.monotonic()
    assert http_get(daemon.http + "/metrics", timeout=5)[0] == 200
    assert time.monotonic() - started < 1, "a scrape waited behind ?after= requests"
    for w in waiting:
        assert w.communicate(timeout=it.TIMEOUT)[0] == "200"
    assert time.monotonic() - started > 0.9, "?after= answered before its time"
    # Read-only: after all that, nothing changed.
    assert daemon.json_of("table", "d1")["devices"][0]["groups"][0]["weight"] == 300

    # Stuck clients: half a request each, never finished; more of them than
    # a listener with a thread per connection would have threads (civetweb
    # had 16, then 64: each held until the 10 s request timeout).
    stuck = []
    for _ in range(100):
        host, _, port = daemon.http.removeprefix("http://").rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        stuck.append(s)
    # Slow readers: Chart.js (about 200 KB) asked for through a small receive buffer, never read.
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(b"GET /chart.js HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.append(s)
    try:
        started = time.monotonic()
        status, _, body = http_get(daemon.http + "/metrics", timeout=5)
        assert status == 200 and b"ioband_group_weight{" in body
        assert time.monotonic() - started < 2, "a scrape waited for the stuck clients"
        # The data path goes on meanwhile.
        fio = Fio(daemon, 2)
        results = fio.results()
        assert results["d1"]["ios"] > 0.8 * RATES["d1"] * 2
    finally:
        for s in stuck:
            s.close()


def test_bad_http_option_stops_the_start():
    tmpdir = it.make_tmpdir()
    not_a_socket = os.path.join(tmpdir, "file")
    open(not_a_socket, "w").close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        for address, reason in (("nonsense", "expected HOST:PORT"), ("127.0.0.1:99999", "expected HOST:PORT"),
                                ("[::1:9180", "expected HOST:PORT"), ("unix:", "expected a path after unix:"),
                                ("no.such.host.invalid:9180", ""),
                                (taken, "cannot listen: Address already in use")):
            r = subprocess.run([it.IOBANDD, "--state-dir", tmpdir, "--http", address], capture_output=True, text=True,
                               timeout=it.TIMEOUT)
            assert r.returncode != 0 and f"--http {address}: {reason}" in r.stderr, (address, r.returncode, r.stderr)
        r = subprocess.run([it.IOBANDD, "--state-dir", tmpdir, "--http", not_a_socket], capture_output=True,
                           text=True, timeout=it.TIMEOUT)
        assert r.returncode != 0 and f"{not_a_socket}: exists and is not a socket" in r.stderr, r.stderr


def curl(*args):
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args], capture_output=True,
                       text=True, timeout=it.TIMEOUT)
    assert r.returncode == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body


def test_http_on_a_unix_socket():
    it.require_tools("curl")
    tmpdir = it.make_tmpdir("ioband-http.")
    path = os.path.join(tmpdir, "http.sock")
    os.mkdir(os.path.join(tmpdir, "d"))
    with ct.Daemon(tmpdir=os.path.join(tmpdir, "d"), args=["--http", f"unix:{path}"]) as d:
        d.create("d1", it.sparse_file(d.path("d1.img"), IMAGE), 1)
        assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o660
        code, body = curl("--unix-socket", path, "http://localhost/metrics")
        assert code == 200 and 'ioband_group_weight{device="d1",group="default"} 100' in body, body
        assert curl("--unix-socket", path, "-X", "POST", "http://localhost/metrics")[0] == 405
        assert curl("--unix-socket", path, "http://localhost/nothing")[0] == 404
        code, body = curl("--unix-socket", path, "http://localhost/api/stats")
        assert code == 200 and json.loads(body)["devices"][0]["name"] == "d1"
        # A second daemon does not take a live socket away.
        r = subprocess.run([it.IOBANDD, "--state-dir", os.path.join(tmpdir, "other"), "--socket",
                            os.path.join(tmpdir, "other.sock"), "--control", os.path.join(tmpdir, "other.ctl"),
                            "--http", path], capture_output=True, text=True, timeout=it.TIMEOUT)
        assert r.returncode != 0 and f"{path}: another server is listening there" in r.stderr, r.stderr
    assert not os.path.exists(path), "the socket was left behind"


def test_http_on_ipv6_loopback():
    it.require_tools("curl")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with ct.Daemon(args=["--http", f"[::1]:{port}"]) as d:
        code, body = curl(f"http://[::1]:{port}/metrics")
        assert code == 200 and "ioband_build_info" in body, body
        assert d.proc.poll() is None


def test_dashboard_assets(daemon):
    status, headers, page = http_get(daemon.http + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="/chart.js">' in page and b"/api/stats" in page
    status, headers, script = http_get(daemon.http + "/chart.js")
    if os.path.exists("/usr/share/javascript/chart.js/chart.min.js"):
        assert status == 200 and b"Chart.js v" in script[:200]
    status, _, body = http_get(daemon.http + "/api/stats")
    stats = json.loads(body)
    names = {d["name"]: d for d in stats["devices"]}
    assert {"d1", "d2"} <= names.keys()
    assert names["d1"]["groups"][0]["weight"] == 300


if __name__ == "__main__":
    sys.exit(it.run(__file__))
