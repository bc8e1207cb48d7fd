#!/usr/bin/python3
"""The dashboard at / of iobandd --http, in headless Chromium (Debian's
`chromium`): the page loads Chart.js from the daemon, updates from
/api/stats, and shows every device and group with non-zero rates; after
`iobandctl message ... weight` the delivered share on the page moves.

The delivered share follows the weights only while the scheduler decides
the split: one device of `type user` with groups 1000 and 2000 (two fio
clients run as those uids with setpriv, so it needs root) under a
device-wide `limit iops-total=800`, which makes the device the bottleneck
whatever the machine (as in test_control_share). A second device, `idle`,
with no client, must be on the page too; its name holds <, & and a quote,
which the page must show as text, not markup.

IOBAND_SCREENSHOT=PATH also saves a screenshot of the page there (how
docs/dashboard.png is made).
"""

import html
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
IMAGE = 64 * MiB
RUNTIME = 90  # seconds each fio may run; stopped once the page is checked
LIMIT = 500  # low enough to be the bottleneck even while Chromium takes the CPU
# Deep queues: at 400 reads/s the heavier client's 64 last 160 ms, so a
# client descheduled on a loaded machine does not run dry and hand its turn
# to the other (the scheduler is work-conserving). At 16 and 800/s (20 ms)
# a load average of 10 on 2 CPUs gave 57.6 % for weight 80.
IODEPTH = 64
IDLE = 'idle<i>&"x'  # a device name is any printable text without spaces

watchdog = it.pytest_watchdog()


def chromium(url, *args):
    argv = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--virtual-time-budget=3500", *args, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=it.TIMEOUT, cwd="/")


def rows_of(dom):
    """{(device, group): {"iops", "configured", "delivered": float|None}} from the page's table."""
    rows = {}
    for m in re.finditer(r'<tr data-device="([^"]+)" data-group="([^"]+)">(.*?)</tr>', dom):
        iops = re.search(r'<td class="iops">([^<]*)</td>', m.group(3)).group(1)
        configured = re.search(r'<td class="configured">([^<]*)</td>', m.group(3)).group(1)
        delivered = re.search(r'<td class="delivered">([^<]*)</td>', m.group(3)).group(1)
        rows[(html.unescape(m.group(1)), html.unescape(m.group(2)))] = {
            "iops": float(iops) if iops not in ("–", "") else None,
            "configured": float(configured.rstrip("%")) if configured.endswith("%") else None,
            "delivered": float(delivered.rstrip("%")) if delivered.endswith("%") else None,
        }
    return rows


def test_dashboard_in_chromium():
    it.require_tools("chromium", "fio")
    ct.require_root()
    port = it.free_tcp_port()
    with ct.Daemon(socket_mode="0666", args=["--http", f"127.0.0.1:{port}"]) as d:
        url = f"http://127.0.0.1:{port}/"
        d.create("vm", it.random_file(d.path("vm.img"), IMAGE, seed=1), 1)
        d.create(IDLE, it.sparse_file(d.path("idle.img"), IMAGE), 2)
        d.message("vm", "type", "user")
        for uid, weight in ((ct.UID_A, 80), (ct.UID_B, 20)):
            d.message("vm", "attach", uid)
            d.message("vm", "weight", f"{uid}:{weight}")
        d.message("vm", "limit", f"iops-total={LIMIT}")
        procs = [subprocess.Popen(ct.fio_argv(d.uri("vm"), f"uid{uid}", "--rw=randread", "--bs=4k",
                                              f"--iodepth={IODEPTH}", "--time_based", f"--runtime={RUNTIME}",
                                              uid=uid),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                                  preexec_fn=it._pdeathsig)
                 for uid in (ct.UID_A, ct.UID_B)]
        try:
            deadline = time.monotonic() + it.TIMEOUT
            while d.json_of("status", "vm")["devices"][0]["connections"] < 2:
                assert time.monotonic() < deadline, "the fio clients did not connect"
                time.sleep(0.1)
            time.sleep(2)

            page = chromium(url, "--dump-dom")
            assert page.returncode == 0, page.stderr[-2000:]
            assert re.search(r'data-updates="([2-9]|\d\d+)"', page.stdout), "fewer than two updates: " + page.stdout[:3000]
            status_line = re.search(r'<div id="status">([^<]*)</div>', page.stdout).group(1)
            assert "iobandd" in status_line and "Chart.js not available" not in status_line, status_line
            assert page.stdout.count("<canvas") == 4 and 'style="display: block' in page.stdout, "no charts drawn"
            rows = rows_of(page.stdout)
            assert set(rows) == {("vm", "default"), ("vm", "1000"), ("vm", "2000"), (IDLE, "default")}, rows
            assert "<td>idle&lt;i&gt;&amp;" in page.stdout, "the device name was not shown as text"
            for group in ("1000", "2000"):
                assert rows[("vm", group)]["iops"] and rows[("vm", group)]["iops"] > 0, rows
            before = rows[("vm", "1000")]["delivered"]
            it.log(f"uid 1000's delivered share at weights 80:20: {before}%")
            assert before == pytest.approx(80, abs=10), rows
            # Configured: the weights of the groups with I/O (80 and 20); the
            # idle default group (100) counts only for itself.
            assert rows[("vm", "1000")]["configured"] == 80.0, rows
            assert rows[("vm", "default")]["configured"] == 50.0, rows

            d.message("vm", "weight", f"{ct.UID_A}:20")
            d.message("vm", "weight", f"{ct.UID_B}:80")
            # The requests queued at the change (16 of each client) still go
            # out first: a second or two before the new split shows fully.
            time.sleep(2.5)
            page = chromium(url, "--dump-dom")
            rows = rows_of(page.stdout)
            after = rows[("vm", "1000")]["delivered"]
            it.log(f"uid 1000's delivered share at weights 20:80: {after}%")
            assert after == pytest.approx(20, abs=10), rows
            assert rows[("vm", "1000")]["configured"] == 20.0, rows

            if os.environ.get("IOBAND_SCREENSHOT"):
                shot = chromium(url, "--window-size=1400,1000", "--virtual-time-budget=8500",
                                f"--screenshot={os.path.abspath(os.environ['IOBAND_SCREENSHOT'])}")
                assert shot.returncode == 0, shot.stderr[-2000:]
        finally:
            for p in procs:
                p.terminate()
                p.communicate(timeout=it.TIMEOUT)


if __name__ == "__main__":
    sys.exit(it.run(__file__))
