#!/usr/bin/python3
"""nbdinfo against iobandd: what each export advertises (size, flags, block
sizes, meta contexts, name, description), the export list, `size=` exporting
the first bytes of a file, `nbdinfo --map` of a sparse file, an unknown
export refused; and with no --export, the default `demo` export (a sparse
1 GiB DIR/demo.img, created once and kept across restarts), and the default
socket DIR/ioband.sock."""

import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

it.require_tools("nbdinfo")

MiB = it.MiB
watchdog = it.pytest_watchdog()


@pytest.fixture(scope="module")
def server():
    d = it.make_tmpdir()
    it.sparse_file(os.path.join(d, "disk.img"), 16 * MiB)
    it.random_file(os.path.join(d, "ro.img"), 8 * MiB, seed=1)
    it.random_file(os.path.join(d, "part.img"), 8 * MiB, seed=2)
    exports = [
        f"disk={d}/disk.img",
        f"ro={d}/ro.img,readonly,description=read only disk",
        "ram=,backend=memory,size=64M,description=a RAM disk",
        f"part={d}/part.img,size=4M",
    ]
    with it.Server(exports, tmpdir=d) as s:
        yield s


def nbdinfo(*args, check=True):
    p = subprocess.run(["nbdinfo", *args], capture_output=True, text=True, timeout=it.TIMEOUT)
    if check:
        assert p.returncode == 0, f"nbdinfo {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p


def info(server, name):
    doc = json.loads(nbdinfo("--json", server.uri(name)).stdout)
    assert doc["protocol"] == "newstyle-fixed", doc
    assert doc["structured"] is True, "structured replies not negotiated"
    assert len(doc["exports"]) == 1, doc
    return doc["exports"][0]


@pytest.mark.parametrize("name,size", [("disk", 16 * MiB), ("ram", 64 * MiB)])
def test_writable_export(server, name, size):
    e = info(server, name)
    assert e["export-name"] == name
    assert e["export-size"] == size
    assert e["is_read_only"] is False
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
                 "can_cache", "can_multi_conn"):
        assert e[flag] is True, f"{name}: {flag} is {e[flag]}"
    assert "base:allocation" in e.get("contexts", []), f"{name}: contexts {e.get('contexts')}"


@pytest.mark.parametrize("name", ["disk", "ro", "ram", "part"])
def test_block_sizes(server, name):
    e = info(server, name)
    assert e.get("block_size_minimum") == 1, e
    assert e.get("block_size_preferred") == 4096, e
    assert e.get("block_size_maximum") == it.MAX_PAYLOAD, e


def test_readonly_export(server):
    e = info(server, "ro")
    assert e["is_read_only"] is True
    assert e["export-size"] == 8 * MiB
    assert e.get("description") == "read only disk", e
    h = server.connect("ro")
    try:
        with open(os.path.join(server.dir, "ro.img"), "rb") as f:
            f.seek(3 * MiB + 5)
            assert h.pread(100000, 3 * MiB + 5) == f.read(100000)
    finally:
        h.shutdown()


def test_description(server):
    e = info(server, "ram")
    assert e.get("description") == "a RAM disk", e


def test_size_exports_first_bytes(server):
    e = info(server, "part")
    assert e["export-size"] == 4 * MiB
    h = server.connect("part")
    try:
        with open(os.path.join(server.dir, "part.img"), "rb") as f:
            f.seek(4 * MiB - 70000)
            assert h.pread(70000, 4 * MiB - 70000) == f.read(70000)
    finally:
        h.shutdown()


def test_list(server):
    doc = json.loads(nbdinfo("--list", "--json", server.uri("disk")).stdout)
    listed = {e["export-name"]: e for e in doc["exports"]}
    # The nbdkit peer runs one process per export: it lists only its own.
    expected = set(server.names()) if server.peer == "iobandd" else {"disk"}
    assert expected <= set(listed), f"listed {sorted(listed)}, expected {sorted(expected)}"
    if "ram" in listed:
        assert listed["ram"].get("description") == "a RAM disk", listed["ram"]
        assert listed["ram"]["export-size"] == 64 * MiB
    plain = nbdinfo("--list", server.uri("disk")).stdout
    for name in expected:
        assert f"export=\"{name}\"" in plain or f"export: {name}" in plain or name in plain


def test_unknown_export(server):
    sock = server.sock("disk")
    p = nbdinfo("--json", f"nbd+unix:///nosuch?socket={sock}", check=False)
    assert p.returncode != 0, "nbdinfo of an unknown export succeeded"
    # ... and the server goes on.
    assert info(server, "disk")["export-size"] == 16 * MiB
    server.assert_alive()


def merged_map(server, name):
    doc = json.loads(nbdinfo("--map", "--json", server.uri(name)).stdout)
    runs = []
    for e in doc:
        if runs and runs[-1][2] == e["type"] and runs[-1][0] + runs[-1][1] == e["offset"]:
            runs[-1][1] += e["length"]
        else:
            runs.append([e["offset"], e["length"], e["type"]])
    return runs


def test_map_of_sparse_file(server):
    runs = merged_map(server, "disk")
    assert runs == [[0, 16 * MiB, 3]], f"a sparse file is not one hole|zero extent: {runs}"
    h = server.connect("disk")
    try:
        h.pwrite(b"\xaa" * (256 * 1024), 4 * MiB)
        h.flush()
    finally:
        h.shutdown()
    runs = merged_map(server, "disk")
    covered = sum(r[1] for r in runs)
    assert covered == 16 * MiB and runs[0][0] == 0, runs
    data = [r for r in runs if r[2] & 1 == 0]
    assert any(r[0] <= 4 * MiB and r[0] + r[1] >= 4 * MiB + 256 * 1024 for r in data), (
        f"written range is not reported allocated: {runs}")
    assert runs[0][2] == 3 and runs[0][1] >= 1 * MiB, f"leading hole is gone: {runs}"
    assert runs[-1][2] == 3 and runs[-1][1] >= 1 * MiB, f"trailing hole is gone: {runs}"


def test_default_demo_export():
    if it.PEER != "iobandd":
        pytest.skip("iobandd's default export only")
    d = it.make_tmpdir()
    img = os.path.join(d, "state", "demo.img")
    with it.Server([], tmpdir=d) as s:
        doc = json.loads(nbdinfo("--list", "--json", f"nbd+unix:///?socket={s.socket_path}").stdout)
        names = [e["export-name"] for e in doc["exports"]]
        assert names == ["demo"], f"default exports: {names}"
        assert doc["exports"][0]["export-size"] == it.GiB
        st = os.stat(img)
        assert st.st_size == it.GiB, f"{img} is {st.st_size} bytes"
        assert st.st_blocks * 512 < 64 * MiB, f"{img} is not sparse: {st.st_blocks} blocks"
        h = s.connect("demo")
        h.pwrite(b"persist!" * 512, it.GiB - 4096)
        h.flush()
        h.shutdown()
    # Started again (on its default socket, STATE_DIR/ioband.sock), it keeps
    # the image it made.
    with it.Server([], tmpdir=d, default_socket=True) as s:
        assert s.socket_path == os.path.join(d, "state", "ioband.sock")
        h = s.connect("demo")
        assert h.get_size() == it.GiB
        assert h.pread(4096, it.GiB - 4096) == b"persist!" * 512, "demo.img was recreated"
        h.shutdown()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
