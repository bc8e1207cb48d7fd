#!/usr/bin/python3
"""The dm-ioband document's examples (seeds/000_...), with `dmsetup`
replaced by `iobandctl`, against a real iobandd: Getting started,
Additional bandwidth control, Example #1 (partitions), Example #3 (a user
group added) and Example #5 (blktap: groups of client pids). Each checks
the `table` and `status` lines and that I/O of a client with a given
uid/pid lands in its group's counters (the default group is -1) and in no
other."""

import json
import os
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

MiB = it.MiB
SIZE = 64 * MiB
SECTORS = SIZE // 512

watchdog = it.pytest_watchdog()


@pytest.fixture
def daemon():
    with ct.Daemon() as d:
        yield d


def image(d, name, size=SIZE):
    return it.sparse_file(d.path(name), size)


def zero(**counts):
    c = dict.fromkeys(ct.COUNTERS, 0)
    c.update(counts)
    return c


def io_totals(counters):
    return {k: counters[k] for k in ("read", "read_sectors", "write", "write_sectors")}


def assert_io(status, name, group, read=0, read_sectors=0, write=0, write_sectors=0):
    got = io_totals(status[name]["groups"][group])
    want = {"read": read, "read_sectors": read_sectors, "write": write, "write_sectors": write_sectors}
    assert got == want, f"{name} group {group}: {got}, expected {want}\nstatus: {status}"
    c = status[name]["groups"][group]
    assert c["delayed_read"] <= c["read"] and c["delayed_write"] <= c["write"], c


def weights(d):
    """{device: {group id: weight}} from `table --json`."""
    return {dev["name"]: {g["id"]: g["weight"] for g in dev["groups"]} for dev in d.json_of("table")["devices"]}


def create_getting_started(d):
    sda1, sda2 = image(d, "sda1.img"), image(d, "sda2.img")
    # echo "0 $(blockdev --getsize /dev/sda1) ioband /dev/sda1 1" | dmsetup create ioband1
    d.create("ioband1", sda1, 1)
    d.create("ioband2", sda2, 1)
    return sda1, sda2


def test_getting_started(daemon):
    d = daemon
    assert d.table() == "No devices found\n"
    sda1, sda2 = create_getting_started(d)
    d.message("ioband1", "weight", 40)
    d.message("ioband2", "weight", 10)

    # dmsetup table: name, start, sectors, target, major:minor, device group,
    # io_throttle, io_limit (dm-ioband's defaults 4 and 128).
    mm = ct.device_major_minor(sda1)
    assert d.table() == (f"ioband1: 0 {SECTORS} ioband {mm} 1 4 128\n"
                         f"ioband2: 0 {SECTORS} ioband {mm} 1 4 128\n")
    assert d.table("ioband2") == f"0 {SECTORS} ioband {mm} 1 4 128\n"
    assert weights(d) == {"ioband1": {-1: 40}, "ioband2": {-1: 10}}
    # dmsetup status: the default group only, nothing counted yet.
    assert d.ok("status") == (f"ioband1: 0 {SECTORS} ioband 1 -1 0 0 0 0 0 0\n"
                              f"ioband2: 0 {SECTORS} ioband 1 -1 0 0 0 0 0 0\n")
    out = d.ok("targets")
    assert out.split()[0] == "ioband", out

    # The devices are NBD exports of the same names.
    listed = subprocess.run(["nbdinfo", "--list", "--json", d.uri("ioband1")], capture_output=True, text=True,
                            timeout=it.TIMEOUT)
    assert listed.returncode == 0, listed.stderr
    names = {e["export-name"] for e in json.loads(listed.stdout)["exports"]}
    assert {"ioband1", "ioband2"} <= names, names

    # I/O through ioband1 counts in ioband1's default group, not ioband2's.
    with ct.Client(d.uri("ioband1")) as c:
        c.do(f"read 3 4096 {MiB}")
        c.do("write 2 8192 0")
    st = d.status()
    assert_io(st, "ioband1", -1, read=3, read_sectors=24, write=2, write_sectors=32)
    assert_io(st, "ioband2", -1)
    with ct.Client(d.uri("ioband2")) as c:
        c.do("read 1 65536 0")
    st = d.status()
    assert_io(st, "ioband1", -1, read=3, read_sectors=24, write=2, write_sectors=32)
    assert_io(st, "ioband2", -1, read=1, read_sectors=128)
    # The writes reached the backing file.
    with open(sda1, "rb") as f:
        assert f.read(16384) == bytes([1]) * 8192 + bytes([2]) * 8192

    # reset clears the statistics of one device only.
    d.message("ioband1", "reset")
    st = d.status()
    assert st["ioband1"]["groups"][-1] == zero()
    assert_io(st, "ioband2", -1, read=1, read_sectors=128)

    # Remove the ioband devices.
    d.ok("remove", "ioband1")
    d.ok("remove", "ioband2")
    assert d.table() == "No devices found\n"
    assert d.ok("status") == "No devices found\n"


def test_additional_bandwidth_control(daemon):
    d = daemon
    create_getting_started(d)
    d.message("ioband1", "weight", 40)
    d.message("ioband2", "weight", 10)
    d.message("ioband1", "type", "user")
    d.message("ioband1", "attach", ct.UID_A)
    d.message("ioband1", "attach", ct.UID_B)
    d.message("ioband1", "weight", f"{ct.UID_A}:30")
    d.message("ioband1", "weight", f"{ct.UID_B}:20")

    # ioband device  ioband group                    weight
    # ioband1        user id 1000                      30
    # ioband1        user id 2000                      20
    # ioband1        default group(the other users)    40
    # ioband2        default group                     10
    assert weights(d) == {"ioband1": {-1: 40, ct.UID_A: 30, ct.UID_B: 20}, "ioband2": {-1: 10}}
    types = {dev["name"]: dev["type"] for dev in d.json_of("table")["devices"]}
    assert types == {"ioband1": "user", "ioband2": "none"}
    st = d.status()
    assert st["ioband1"]["order"] == [-1, ct.UID_A, ct.UID_B], st
    assert st["ioband2"]["order"] == [-1], st
    assert all(c == zero() for c in st["ioband1"]["groups"].values())

    # Each uid's I/O in its own group; root (the other users) in the default.
    with ct.Client(d.uri("ioband1"), uid=ct.UID_A) as c:
        c.do("read 5 4096 0")
    with ct.Client(d.uri("ioband1"), uid=ct.UID_B) as c:
        c.do("write 3 4096 0")
        c.do("read 1 512 0")
    with ct.Client(d.uri("ioband1")) as c:
        c.do("read 2 1024 0")
    # uid 1000 on ioband2 (type none): ioband2's default group.
    with ct.Client(d.uri("ioband2"), uid=ct.UID_A) as c:
        c.do("read 7 4096 0")
    st = d.status()
    assert_io(st, "ioband1", ct.UID_A, read=5, read_sectors=40)
    assert_io(st, "ioband1", ct.UID_B, read=1, read_sectors=1, write=3, write_sectors=24)
    assert_io(st, "ioband1", -1, read=2, read_sectors=4)
    assert_io(st, "ioband2", -1, read=7, read_sectors=56)

    # The status line has seven columns per group, in the order listed.
    line = d.ok("status", "ioband1").split()
    assert line[:4] == ["0", str(SECTORS), "ioband", "1"], line
    assert [int(x) for x in line[4::7]] == [-1, ct.UID_A, ct.UID_B], line

    # A detached group's connections go to the default group.
    d.message("ioband1", "detach", ct.UID_B)
    with ct.Client(d.uri("ioband1"), uid=ct.UID_B) as c:
        c.do("read 4 4096 0")
    st = d.status()
    assert ct.UID_B not in st["ioband1"]["groups"], st
    assert_io(st, "ioband1", -1, read=6, read_sectors=36)

    d.ok("remove", "ioband1")
    d.ok("remove", "ioband2")


def example_1(d):
    sda1, sda2 = create_getting_started(d)
    d.message("ioband1", "weight", 80)
    d.message("ioband2", "weight", 40)
    return sda1, sda2


def test_example_1_partitions(daemon, tmp_path):
    d = daemon
    example_1(d)
    assert weights(d) == {"ioband1": {-1: 80}, "ioband2": {-1: 40}}
    mm = ct.device_major_minor(d.path("sda1.img"))
    assert ct.parse_table(d.table()) == {
        "ioband1": ["0", str(SECTORS), "ioband", mm, "1", "4", "128"],
        "ioband2": ["0", str(SECTORS), "ioband", mm, "1", "4", "128"],
    }

    # "Create filesystems on the ioband devices": an ext3 file system made in
    # a file is copied onto each device through NBD, read back and checked.
    if shutil.which("mkfs.ext3") is None or shutil.which("e2fsck") is None:
        pytest.skip("mkfs.ext3/e2fsck are not installed")
    for i, name in enumerate(("ioband1", "ioband2")):
        fs = str(tmp_path / f"fs{i}.img")
        it.sparse_file(fs, 32 * MiB)
        subprocess.run(["mkfs.ext3", "-q", "-F", "-L", f"mnt{i + 1}", fs], check=True, timeout=it.TIMEOUT,
                       capture_output=True)
        subprocess.run(["nbdcopy", fs, d.uri(name)], check=True, timeout=it.TIMEOUT)
        back = str(tmp_path / f"back{i}.img")
        subprocess.run(["nbdcopy", d.uri(name), back], check=True, timeout=it.TIMEOUT)
        with open(back, "rb") as f, open(fs, "rb") as g:
            assert f.read(32 * MiB) == g.read(), f"{name}: the file system did not come back as written"
        os.truncate(back, 32 * MiB)
        fsck = subprocess.run(["e2fsck", "-fn", back], capture_output=True, text=True, timeout=it.TIMEOUT)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    st = d.status()
    for name in ("ioband1", "ioband2"):
        c = st[name]["groups"][-1]
        assert c["write"] > 0 and c["read"] > 0, st
        # nbdcopy wrote the 32 MiB file system (less its holes) and read back
        # what block status says is data.
        assert 0 < c["read_sectors"] <= SECTORS, st
        assert 0 < c["write_sectors"] <= 32 * MiB // 512, st


def test_example_3_user_group(daemon):
    d = daemon
    example_1(d)
    # 1) Set the type of ioband2 to "user." -- as the document writes it, with
    # the sentence's full stop, which iobandctl accepts. A misspelt type is
    # refused with one line and changes nothing.
    before = d.table()
    r = d.ctl("message", "ioband2", "0", "type", "usr")
    ct.one_line_error(r, "type usr")
    assert '"usr"' in r.stderr, r.stderr
    assert d.table() == before
    d.message("ioband2", "type", "user.")
    types = {dev["name"]: dev["type"] for dev in d.json_of("table")["devices"]}
    assert types == {"ioband1": "none", "ioband2": "user"}
    # 2) Create a new ioband group on ioband2.
    d.message("ioband2", "attach", ct.UID_A)
    # 3) Assign weight of 20 to this newly created ioband group.
    d.message("ioband2", "weight", f"{ct.UID_A}:20")
    assert weights(d) == {"ioband1": {-1: 80}, "ioband2": {-1: 40, ct.UID_A: 20}}
    assert d.table() == before  # type and groups are not in the table line
    st = d.status()
    assert st["ioband1"]["order"] == [-1] and st["ioband2"]["order"] == [-1, ct.UID_A], st

    with ct.Client(d.uri("ioband2"), uid=ct.UID_A) as app:
        app.do("write 4 4096 0")
        app.do("read 4 4096 0")
    with ct.Client(d.uri("ioband2")) as other:
        other.do("read 1 4096 0")
    # The same application on ioband1 (type none) counts in its default group.
    with ct.Client(d.uri("ioband1"), uid=ct.UID_A) as app:
        app.do("read 2 4096 0")
    st = d.status()
    assert_io(st, "ioband2", ct.UID_A, read=4, read_sectors=32, write=4, write_sectors=32)
    assert_io(st, "ioband2", -1, read=1, read_sectors=8)
    assert_io(st, "ioband1", -1, read=2, read_sectors=16)


def test_example_5_blktap_pids(daemon):
    d = daemon
    disk = image(d, "sda1.img", 128 * MiB)
    # 1) Create an ioband device.
    d.create("ioband1", disk, 1)
    # 2-3) Two "tapdisk" processes serve vm1.img and vm2.img: here two client
    # processes, already running and doing I/O when the groups are made.
    vm1 = ct.Client(d.uri("ioband1"))
    vm2 = ct.Client(d.uri("ioband1"))
    try:
        vm1.do("write 2 4096 0")
        vm2.do(f"write 3 4096 {64 * MiB}")
        st = d.status()
        assert_io(st, "ioband1", -1, write=5, write_sectors=40)
        assert d.json_of("status", "ioband1")["devices"][0]["connections"] == 2

        # 4) Their process IDs (lsof in the document; we know them).
        p1, p2 = vm1.pid, vm2.pid
        assert p1 != p2
        # 5) Groups for both pids, weights 80 and 40.
        d.message("ioband1", "type", "pid")
        d.message("ioband1", "attach", p1)
        d.message("ioband1", "weight", f"{p1}:80")
        d.message("ioband1", "attach", p2)
        d.message("ioband1", "weight", f"{p2}:40")
        assert weights(d) == {"ioband1": {-1: 100, p1: 80, p2: 40}}
        st = d.status()
        assert st["ioband1"]["order"] == sorted([-1, p1, p2]), st

        # The connections that were open when the groups were attached are
        # classified again: from now on each pid's I/O counts in its group.
        vm1.do("read 6 4096 0")
        vm2.do(f"read 2 8192 {64 * MiB}")
        vm2.do(f"write 1 4096 {64 * MiB}")
        st = d.status()
        assert_io(st, "ioband1", p1, read=6, read_sectors=48)
        assert_io(st, "ioband1", p2, read=2, read_sectors=32, write=1, write_sectors=8)
        assert_io(st, "ioband1", -1, write=5, write_sectors=40)

        # A third process with no group of its own: the default group.
        with ct.Client(d.uri("ioband1")) as vm3:
            vm3.do("read 1 4096 0")
        assert_io(d.status(), "ioband1", -1, read=1, read_sectors=8, write=5, write_sectors=40)

        # Detach vm2's group: its connection goes back to the default group.
        d.message("ioband1", "detach", p2)
        vm2.do(f"read 1 4096 {64 * MiB}")
        st = d.status()
        assert p2 not in st["ioband1"]["groups"]
        assert_io(st, "ioband1", -1, read=2, read_sectors=16, write=5, write_sectors=40)
        assert_io(st, "ioband1", p1, read=6, read_sectors=48)
    finally:
        vm1.close()
        vm2.close()
    d.assert_alive()


if __name__ == "__main__":
    ct.require_root()
    it.require_tools("setpriv", "nbdinfo", "nbdcopy")
    sys.exit(it.run(__file__))
