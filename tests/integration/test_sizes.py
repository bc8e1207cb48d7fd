#!/usr/bin/python3
"""Export sizes that are not multiples of a block: a raw file of 5 MiB + 777
bytes (the tail of an O_DIRECT file is a short read), `size=` cutting a
larger file at an odd byte (nothing beyond it is touched), a 1-byte RAM
disk, and the K/M/G suffixes. Reads and writes at the very end work, one
byte more fails, and the files keep their sizes."""

import errno
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iobandtest as it  # noqa: E402

import pytest  # noqa: E402

nbd = it.require_nbd()

MiB = it.MiB
ODD = 5 * MiB + 777
CUT = 3000001
watchdog = it.pytest_watchdog()


@pytest.fixture(scope="module")
def server():
    d = it.make_tmpdir()
    it.random_file(os.path.join(d, "odd.img"), ODD, seed=11)
    it.random_file(os.path.join(d, "big.img"), 8 * MiB, seed=12)
    exports = [
        f"odd={d}/odd.img",
        f"cut={d}/big.img,size={CUT}",
        "tiny=,backend=memory,size=1",
        "kilo=,backend=memory,size=64K",
        "giga=,backend=memory,size=1G",
    ]
    with it.Server(exports, tmpdir=d) as s:
        yield s
        s.assert_alive()


def read_file(server, name, offset=0, count=None):
    with open(os.path.join(server.dir, name), "rb") as f:
        f.seek(offset)
        return f.read() if count is None else f.read(count)


@pytest.mark.parametrize("name,size", [("odd", ODD), ("cut", CUT), ("tiny", 1),
                                       ("kilo", 64 * 1024), ("giga", it.GiB)])
def test_size(server, name, size):
    h = server.connect(name)
    assert h.get_size() == size
    h.shutdown()


def test_odd_sized_file(server):
    h = server.connect("odd", strict=False)
    original = read_file(server, "odd.img")
    assert h.pread(ODD, 0) == original, "reading all of an odd-sized file"
    assert h.pread(777, 5 * MiB) == original[5 * MiB:]
    assert h.pread(1, ODD - 1) == original[-1:]
    # Writes over the tail, unaligned at both ends.
    tail = os.urandom(5000)
    h.pwrite(tail, ODD - 5000)
    h.pwrite(b"\x7e", ODD - 1, flags=nbd.CMD_FLAG_FUA)
    expect = original[:ODD - 5000] + tail[:-1] + b"\x7e"
    assert h.pread(8192, ODD - 8192) == expect[-8192:]
    h.zero(300, ODD - 400)
    expect = expect[:ODD - 400] + bytes(300) + expect[ODD - 100:]
    assert h.pread(4096, ODD - 4096) == expect[-4096:]
    it.expect_error(lambda: h.pread(2, ODD - 1), errno.EINVAL, what="read 1 byte past the end")
    it.expect_error(lambda: h.pwrite(b"ab", ODD - 1), errno.ENOSPC, errno.EINVAL,
                    what="write 1 byte past the end")
    exts = []
    h.block_status(4096, ODD - 4096, lambda ctx, off, entries, err: exts.append(entries) or 0)
    assert exts, "no block status for the tail"
    h.flush()
    h.shutdown()
    assert os.path.getsize(os.path.join(server.dir, "odd.img")) == ODD, "the file changed size"
    assert read_file(server, "odd.img") == expect, "odd.img does not hold what was written"


def test_size_cuts_a_file(server):
    h = server.connect("cut", strict=False)
    original = read_file(server, "big.img")
    assert h.pread(CUT, 0) == original[:CUT]
    h.pwrite(b"Z" * 10, CUT - 10)
    assert h.pread(20, CUT - 20) == original[CUT - 20:CUT - 10] + b"Z" * 10
    it.expect_error(lambda: h.pwrite(b"yy", CUT - 1), errno.ENOSPC, errno.EINVAL,
                    what="write across size=")
    it.expect_error(lambda: h.zero(4096, CUT - 100), errno.ENOSPC, errno.EINVAL,
                    what="write zeroes across size=")
    it.expect_error(lambda: h.trim(4096, CUT - 100), errno.EINVAL, what="trim across size=")
    it.expect_error(lambda: h.pread(4096, CUT - 100), errno.EINVAL, what="read across size=")
    # Zeroing and trimming the last bytes inside the export stays inside it.
    h.zero(5, CUT - 5)
    h.flush()
    now = read_file(server, "big.img")
    assert now[CUT - 10:CUT - 5] == b"Z" * 5 and now[CUT - 5:CUT] == bytes(5)
    h.trim(2 * MiB, CUT - 2 * MiB)
    h.flush()
    h.shutdown()
    now = read_file(server, "big.img")
    assert len(now) == 8 * MiB, "the file changed size"
    assert now[CUT:] == original[CUT:], "bytes beyond size= changed"
    assert now[:CUT - 2 * MiB] == original[:CUT - 2 * MiB], "bytes before the trim changed"


def test_one_byte_export(server):
    h = server.connect("tiny", strict=False)
    assert h.get_size() == 1
    h.pwrite(b"\x5a", 0)
    assert h.pread(1, 0) == b"\x5a"
    it.expect_error(lambda: h.pread(2, 0), errno.EINVAL, what="read 2 bytes of a 1-byte export")
    it.expect_error(lambda: h.pread(1, 1), errno.EINVAL, what="read at offset 1 of a 1-byte export")
    h.zero(1, 0)
    assert h.pread(1, 0) == b"\0"
    h.shutdown()


def test_giga_export_ends(server):
    h = server.connect("giga")
    data = os.urandom(4096)
    h.pwrite(data, it.GiB - 4096)
    assert h.pread(4096, it.GiB - 4096) == data
    assert h.pread(4096, it.GiB // 2) == bytes(4096)
    h.shutdown()


if __name__ == "__main__":
    sys.exit(it.run(__file__))
