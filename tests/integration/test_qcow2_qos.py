#!/usr/bin/python3
"""The scheduler charges a qcow2 image's real device I/O, end to end.

One ioband device on a qcow2 image with 256 KiB clusters, `type user`, with
groups 1000 and 2000 at equal weight, and a device-wide `limit iops-total`
so that both groups' requests wait inside ioband whatever the machine's
speed (as test_control_share does). Two fio clients (`--ioengine=nbd`, 4 KiB
random writes, 32 in flight), run as uids 1000 and 2000: uid 1000 writes
into the unallocated part of the image, so each of its writes makes the
backend write a whole 256 KiB cluster; uid 2000 writes in place, into
clusters allocated before. The backend reports what reached the storage
for each request (IoOp::storage_io) and the device group charges it to the
request's group at completion, in the policy's units:

- policy fair charges device time: a 256 KiB write costs many 4 KiB writes,
  so at equal weight uid 1000 gets a small part of the requests;
- policy weight charges one token an operation, and an allocating write
  into an image without a backing file is one operation (the cluster write:
  the zeroes around the 4 KiB are not read): nothing more is charged, and
  the split is even. That is what fair would do without the charge too:
  the requests are priced as what the clients asked, 4 KiB writes alike. It
  also shows that uid 1000 could have had half: its own writes' speed did
  not hold it back.

The split is measured from the `status` counters over a window in which both
clients run; the file's growth over the same window says how many clusters
uid 1000's writes allocated. Only ratios within one run are asserted, with
wide bounds: the device model learns the storage's speed while serving, and
what a 256 KiB write costs against a 4 KiB one is not the same on every
disk.
"""

import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import controltest as ct  # noqa: E402
import iobandtest as it  # noqa: E402

MiB, GiB = it.MiB, 1024 * it.MiB
CLUSTER = 256 * 1024
SIZE = 3 * GiB                   # virtual: two unallocated GiB, then the allocated region
ALLOCATED = 32 * MiB             # uid 2000 writes here, in place
REGION_B = 2 * GiB
IOPS = 800                       # the device-wide limit: both groups queue inside ioband
RUNTIME = 5
WINDOW = 2.5

watchdog = it.pytest_watchdog()


def model_ns(write_bytes):
    """A random write's device time in the default model (device_model.h: 20,000 4 KiB writes/s, 400 MB/s)."""
    byte_ns = 1e9 / 400e6
    return 1e9 / 20000 - 4096 * byte_ns + write_bytes * byte_ns


def measure(d, image, offsets):
    """Both clients at once ({uid: (offset, size)}): {uid: requests in the
    window}, and the bytes the image file grew by in it."""
    d.message("vm", "reset")
    procs = {}
    spawned = time.monotonic()
    for uid, (offset, size) in offsets.items():
        argv = ct.fio_argv(d.uri("vm"), f"uid{uid}", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--time_based",
                           f"--runtime={RUNTIME}", f"--offset={offset}", f"--size={size}", "--norandommap",
                           "--randrepeat=0", uid=uid)
        procs[uid] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                                      preexec_fn=it._pdeathsig)
    try:
        deadline = time.monotonic() + it.TIMEOUT
        while any(d.counters("vm", uid)["write"] == 0 for uid in offsets):
            assert time.monotonic() < deadline, "the fio clients did not both start"
            assert all(p.poll() is None for p in procs.values()), "a fio client ended early"
            time.sleep(0.1)
        time.sleep(0.5)
        before, grown_before = d.status()["vm"]["groups"], os.path.getsize(image)
        t0 = time.monotonic()
        end = min(t0 + WINDOW, spawned + RUNTIME - 0.75)
        assert end - t0 >= 1.5, f"the fio clients took {t0 - spawned:.1f}s to start"
        time.sleep(end - t0)
        after, grown_after = d.status()["vm"]["groups"], os.path.getsize(image)
        both_running = all(p.poll() is None for p in procs.values())
    finally:
        outs = {}
        for uid, p in procs.items():
            try:
                outs[uid] = p.communicate(timeout=RUNTIME + it.TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                outs[uid] = p.communicate()
    for uid, p in procs.items():
        assert p.returncode == 0, f"fio as uid {uid} exited {p.returncode}: {outs[uid][1]}"
    assert both_running, "a fio client ended inside the measured window; make RUNTIME longer"
    assert after[-1]["write"] == before[-1]["write"], "requests in the default group"
    delta = {uid: after[uid]["write"] - before[uid]["write"] for uid in offsets}
    assert all(n > 0 for n in delta.values()), delta
    return delta, grown_after - grown_before


def test_allocating_writes_are_charged_their_cluster_writes():
    ct.require_root()
    it.require_tools("fio", "setpriv", "qemu-img")
    nbd = it.require_nbd()
    with ct.Daemon(socket_mode="0666") as d:
        image = d.path("vm.qcow2")
        subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}", image, str(SIZE)],
                       check=True, capture_output=True)
        d.create("vm", image, 1, sectors=SIZE // ct.SECTOR)
        # uid 2000's region, allocated by root (the default group).
        h = nbd.NBD()
        h.connect_uri(d.uri("vm"))
        chunk = os.urandom(4 * MiB)
        for offset in range(REGION_B, REGION_B + ALLOCATED, len(chunk)):
            h.pwrite(chunk, offset)
        h.flush()
        h.shutdown()
        d.message("vm", "type", "user")
        for uid in (ct.UID_A, ct.UID_B):
            d.message("vm", "attach", uid)
            d.message("vm", "weight", f"{uid}:100")
        d.message("vm", "limit", f"iops-total={IOPS}")

        results = {}
        for phase, policy in enumerate(("weight", "fair")):
            d.message("vm", "policy", policy)
            results[policy] = measure(d, image, {ct.UID_A: (phase * GiB, GiB), ct.UID_B: (REGION_B, ALLOCATED)})
        shares = {}
        for policy, (delta, grown) in results.items():
            shares[policy] = 100.0 * delta[ct.UID_A] / sum(delta.values())
            # Device time by the default model: what fair evens out at equal weights.
            time_ratio = delta[ct.UID_A] * model_ns(CLUSTER) / (delta[ct.UID_B] * model_ns(4096))
            it.report(f"policy {policy}, equal weights, limit iops-total={IOPS}: uid {ct.UID_A} (allocating "
                      f"{CLUSTER // 1024} KiB clusters) got {shares[policy]:.1f}% of {sum(delta.values())} requests "
                      f"({delta[ct.UID_A]} writes, the file grew by {grown // CLUSTER} clusters); device time "
                      f"uid {ct.UID_A} / uid {ct.UID_B} by the default model {time_ratio:.2f}")
            # Nearly each of uid 1000's writes allocated: the charge is for real I/O.
            assert grown // CLUSTER >= delta[ct.UID_A] // 2, (policy, grown, delta)
        assert 30.0 <= shares["weight"] <= 70.0, (
            f"policy weight, equal weights: uid {ct.UID_A} got {shares['weight']:.1f}% of the requests")
        assert shares["fair"] <= shares["weight"] / 2 and shares["fair"] <= 25.0, (
            f"uid {ct.UID_A}'s writes each wrote a {CLUSTER // 1024} KiB cluster, yet under policy fair it got "
            f"{shares['fair']:.1f}% of the requests ({shares['weight']:.1f}% under weight): its device I/O "
            f"was not charged")
        d.assert_alive()
    check = subprocess.run(["qemu-img", "check", image], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


if __name__ == "__main__":
    ct.require_root()
    it.require_tools("fio", "setpriv")
    sys.exit(it.run(__file__))
