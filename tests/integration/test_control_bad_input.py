#!/usr/bin/python3
"""Bad input through iobandctl against the real daemon: each case exits
non-zero (2 for a usage error, 1 for a refusal), prints nothing on stdout
and exactly one line on stderr, and changes nothing: `table`, `table
--json`, `status` and state.json (bytes and mtime) are as they were, and
the daemon goes on serving."""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
SIZE = 8 * MiB
SECTORS = SIZE // 512

watchdog = it.pytest_watchdog()

# (what, iobandctl arguments, table line on stdin or None, exit code, words
# the message must contain). {img} is a good image, {dir} the test directory.
CASES = [
    ("unknown verb", ["message", "d1", "0", "frobnicate", "3"], None, 2, ["frobnicate"]),
    ("unknown command", ["frobnicate", "d1"], None, 2, ["frobnicate"]),
    ("zero weight", ["message", "d1", "0", "weight", "0"], None, 2, ["weight"]),
    ("zero group weight", ["message", "d2", "0", "weight", "1000:0"], None, 2, ["weight"]),
    ("negative weight", ["message", "d1", "0", "weight", "-5"], None, 2, ["-5"]),
    ("weight not a number", ["message", "d1", "0", "weight", "lots"], None, 2, ["lots"]),
    ("weight too large", ["message", "d1", "0", "weight", "1000001"], None, 2, ["1000001"]),
    ("weight of a group not attached", ["message", "d2", "0", "weight", "3000:10"], None, 1, ["3000"]),
    ("missing path", ["create", "d3"], "0 {sectors} ioband {dir}/missing.img 1\n", 1, ["missing.img"]),
    ("too small", ["create", "d3"], "0 {too_many} ioband {img} 1\n", 1, ["smaller", str(SECTORS + 1)]),
    ("duplicate name", ["create", "d1"], "0 {sectors} ioband {img} 1\n", 1, ["d1", "exists"]),
    ("not the ioband target", ["create", "d3"], "0 {sectors} linear {img} 1\n", 2, ["linear"]),
    ("start sector not 0", ["create", "d3"], "8 {sectors} ioband {img} 1\n", 2, ["8"]),
    ("no device group", ["create", "d3"], "0 {sectors} ioband {img}\n", 2, []),
    ("no table line", ["create", "d3"], "", 2, []),
    ("two table lines", ["create", "d3"], "0 {sectors} ioband {img} 1\n0 {sectors} ioband {img} 1\n", 2, []),
    ("zero sectors", ["create", "d3"], "0 0 ioband {img} 1\n", 2, []),
    ("io_limit below io_throttle", ["create", "d3"], "0 {sectors} ioband {img} 5 10 4\n", 1, ["io_limit"]),
    ("bad device name", ["create", "bad name"], "0 {sectors} ioband {img} 1\n", 2, ["bad name"]),
    ("device name starting with -", ["create", "--", "-x"], "0 {sectors} ioband {img} 1\n", 2, ["-x"]),
    ("sector not 0", ["message", "d1", "1", "weight", "10"], None, 2, ['"1"']),
    ("no such device", ["message", "nosuch", "0", "weight", "10"], None, 1, ["nosuch"]),
    ("unknown type", ["message", "d1", "0", "type", "martian"], None, 2, ["martian"]),
    ("attach with type none", ["message", "d1", "0", "attach", "1000"], None, 1, ["type"]),
    ("attach twice", ["message", "d2", "0", "attach", "1000"], None, 1, ["1000"]),
    ("attach -1", ["message", "d2", "0", "attach", "-1"], None, 1, ["default"]),
    ("detach not attached", ["message", "d2", "0", "detach", "4242"], None, 1, ["4242"]),
    ("detach the default group", ["message", "d2", "0", "detach", "-1"], None, 1, ["default"]),
    ("type change with groups", ["message", "d2", "0", "type", "pid"], None, 1, ["1000"]),
    ("token 0", ["message", "d1", "0", "token", "0"], None, 2, ["token"]),
    ("io_limit 0", ["message", "d1", "0", "io_limit", "0"], None, 2, ["io_limit"]),
    ("io_throttle above io_limit", ["message", "d1", "0", "io_throttle", "129"], None, 1, ["io_throttle"]),
    ("unknown policy", ["message", "d1", "0", "policy", "lottery"], None, 2, ["lottery"]),
    ("unknown limit key", ["message", "d1", "0", "limit", "iops-sideways=5"], None, 2, ["iops-sideways"]),
    ("limit value not a number", ["message", "d1", "0", "limit", "iops-total=fast"], None, 2, ["fast"]),
    ("limit of a group not attached", ["message", "d2", "0", "limit", "77:iops-total=5"], None, 1, ["77"]),
    ("missing verb argument", ["message", "d1", "0", "weight"], None, 2, ["weight"]),
    ("extra verb argument", ["message", "d1", "0", "reset", "now"], None, 2, ["now"]),
    ("remove nothing", ["remove"], None, 2, []),
    ("remove unknown", ["remove", "nosuch"], None, 1, ["nosuch"]),
    ("table of an unknown device", ["table", "nosuch"], None, 1, ["nosuch"]),
    ("status of an unknown device", ["status", "nosuch"], None, 1, ["nosuch"]),
]


@pytest.fixture(scope="module")
def daemon():
    with ct.Daemon() as d:
        img = it.sparse_file(d.path("one.img"), SIZE)
        d.create("d1", img, 1)
        d.create("d2", it.sparse_file(d.path("two.img"), SIZE), 1)
        d.message("d2", "type", "user")
        d.message("d2", "attach", 1000)
        d.message("d2", "weight", "1000:30")
        d.message("d2", "limit", "1000:iops-total=100")
        with ct.Client(d.uri("d1")) as c:
            c.do("write 1 4096 0")
        d.img = img
        yield d


def observe(d):
    return {
        "table": d.table(),
        "table_json": d.json_of("table"),
        "status": d.ok("status"),
        "state": d.state_bytes(),
        "state_mtime": os.stat(d.state_path).st_mtime_ns,
    }


@pytest.mark.parametrize("what,args,stdin,code,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(daemon, what, args, stdin, code, words):
    d = daemon
    before = observe(d)
    if stdin is not None:
        stdin = stdin.format(sectors=SECTORS, too_many=SECTORS + 1, img=d.img, dir=d.dir)
    r = d.ctl(*args, input=stdin)
    line = ct.one_line_error(r, what)
    assert r.returncode == code, f"{what}: exit {r.returncode}, expected {code}: {line}"
    for w in words:
        assert w in line, f"{what}: the message does not mention {w!r}: {line}"
    assert observe(d) == before, f"{what}: the state changed"
    d.assert_alive()


def test_still_serving(daemon):
    d = daemon
    with ct.Client(d.uri("d1")) as c:
        c.do("read 1 4096 0")
    assert ct.parse_table(d.table()).keys() == {"d1", "d2"}


if __name__ == "__main__":
    sys.exit(it.run(__file__))
