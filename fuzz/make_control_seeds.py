#!/usr/bin/python3
"""Writes the seed corpus of the control harnesses.

control_protocol: the examples of the dm-ioband document (seeds/000_...) and
every other verb, as the request lines iobandctl sends (compact JSON, keys
in order, one request per line). control_language: the same table lines and
message words. state_file: the state.json a real iobandd saved after each
scenario (run with `--iobandd build/bin/iobandd`; the images' paths are then
renamed to the paths the harness's fake platform knows), plus older and
damaged files. export_spec: iobandd --export specs.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def create(name, table):
    return {"command": "create", "name": name, "table": table}


def message(name, words):
    return {"command": "message", "name": name, "sector": "0", "args": words.split()}


def remove(name, force=False):
    return {"command": "remove", "name": name, "force": force}


def cmd(command, **fields):
    return dict(command=command, **fields)


SECTORS = 44371467
# The document's examples, in its order (dmsetup -> iobandctl).
SCENARIOS = {
    "getting-started": [
        create("ioband1", f"0 {SECTORS} ioband /dev/sda1 1"),
        create("ioband2", f"0 {SECTORS} ioband /dev/sda2 1"),
        message("ioband1", "weight 40"), message("ioband2", "weight 10"),
        cmd("table"), cmd("status"), cmd("targets"),
        remove("ioband1"), remove("ioband2"),
    ],
    "additional-control": [
        create("ioband1", f"0 {SECTORS} ioband /dev/sda1 1"),
        create("ioband2", f"0 {SECTORS} ioband /dev/sda2 1"),
        message("ioband1", "weight 40"), message("ioband2", "weight 10"),
        message("ioband1", "type user"), message("ioband1", "attach 1000"), message("ioband1", "attach 2000"),
        message("ioband1", "weight 1000:30"), message("ioband1", "weight 2000:20"),
        cmd("table", target="ioband"), cmd("status", name="ioband1"),
    ],
    "example1-partitions": [
        create("ioband1", f"0 {SECTORS} ioband /dev/sda1 1 10 200"),
        create("ioband2", f"0 {SECTORS} ioband /dev/sda2 1"),
        message("ioband1", "weight 80"), message("ioband2", "weight 40"),
        message("ioband1", "io_throttle 16"), message("ioband1", "io_limit 128"),
        message("ioband1", "token 256"), cmd("table"),
    ],
    "example2-lvm": [
        create("ioband1", "0 2097152 ioband /dev/mapper/lv0 1"),
        create("ioband2", "0 2097152 ioband /dev/mapper/lv1 1"),
        message("ioband1", "weight 80"), message("ioband2", "weight 40"), cmd("status"),
    ],
    "example3-user-group": [
        create("ioband1", "0 2097152 ioband /dev/sdb3 2"),
        create("ioband2", "0 2097152 ioband /dev/sdb4 2"),
        message("ioband1", "weight 80"), message("ioband2", "weight 40"),
        message("ioband2", "type user"), message("ioband2", "attach 1000"), message("ioband2", "weight 1000:20"),
        message("ioband2", "detach 1000"), message("ioband1", "reset"),
    ],
    "example4-blktap-pids": [
        create("ioband1", f"0 {SECTORS} ioband /dev/xvdc1 1"),
        message("ioband1", "type pid"), message("ioband1", "attach 15011"), message("ioband1", "attach 15276"),
        message("ioband1", "weight 15011:80"), message("ioband1", "weight 15276:40"), message("ioband1", "weight 4"),
        cmd("status"),
    ],
    "other-verbs": [
        create("vm1", "0 2097152 ioband /vmdisk/vm1.img 3"),
        create("vm2", "0 2097152 ioband /vmdisk/vm2.img 3 8 64"),
        message("vm1", "policy range-bw"), message("vm1", "type gid"), message("vm1", "attach 100"),
        message("vm1", "range-bw 100:1000:8000"), message("vm1", "range-bw 500:2000"),
        message("vm1", "policy fair"), message("vm1", "carryover 4"), message("vm1", "io_limit auto"),
        message("vm1", "limit iops-total=200,bps-write=10M"), message("vm1", "limit 100:iops-read=50,iops-size=8192"),
        message("vm1", "limit -1:bps-total=1G,bps-total-max=2G,bps-total-max-length=3"),
        message("vm2", "model rbps=500M,rrandiops=40000,depth=16"), message("vm2", "model"),
        message("vm2", "type pgrp"), message("vm2", "attach 10.0.0.1"), message("vm2", "type cgroup"),
        cmd("calibrate", name="vm2", seconds=1), message("vm1", "limit 100:none"), message("vm2", "model default"),
        message("vm1", "policy weight-iosize"), cmd("table", name="vm1"), cmd("status", name="vm2", target="ioband"),
        remove("vm1", True), cmd("table"),
    ],
    "refusals": [
        "not json", "[]", '{"command":"frobnicate"}', '{"command":"create","name":"x"}',
        create("../etc", "0 8 ioband /small.img 1"), create("big", "0 99999999999 ioband /small.img 1"),
        create("s", "0 2048 ioband /small.img 1"), create("s", "0 2048 ioband /small.img 1"),
        message("s", "weight 0"), message("s", "weight 1000001"), message("s", "attach 1"),
        message("s", "type bogus"), message("s", "io_limit 0"), message("s", "carryover 65"),
        {"command": "message", "name": "s", "sector": "8", "args": ["reset"]},
        {"command": "message", "name": "s", "sector": 0, "args": ["weight", "7"], "id": 42},
        {"command": "remove", "name": "s", "force": "yes"}, remove("nope"), remove("s"),
    ],
}

EXPORT_SPECS = [
    "disk=/srv/disk.img", "ro=/srv/disk.img,readonly,description=Read only disk",
    "mem=x,backend=memory,size=64M", "part=/dev/sda1,size=1GiB",
    "flaky=/srv/disk.img,fault-errno=EIO,fault-rate=0.5,fault-delay-ms=10",
    "full=/srv/disk.img,fault-errno=28", "bad", "=nope", "x=/a,size=1T,backend=memory",
]

OLD_STATE = {"version": 1, "device_groups": [{"id": 1, "policy": "weight", "token": 2048, "carryover": 2,
                                               "io_throttle": 4, "io_limit": 128}],
             "devices": [{"name": "ioband1", "path": "/dev/sda1", "sectors": SECTORS, "device_group_id": 1,
                          "type": "none", "limits": {},
                          "groups": [{"id": -1, "weight": 100, "range_bw": {"min_kib": 0, "max_kib": 0},
                                      "limits": {}}]}]}


def line(request):
    return request if isinstance(request, str) else json.dumps(request, separators=(",", ":"), sort_keys=True)


def write(harness, name, data):
    os.makedirs(os.path.join(CORPUS, harness), exist_ok=True)
    with open(os.path.join(CORPUS, harness, f"seed-{name}"), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def record_states(iobandd):
    """Each scenario against a real iobandd on sparse images; its state.json after."""
    states = {}
    fake_paths = sorted({r["table"].split()[3] for s in SCENARIOS.values() for r in s
                         if isinstance(r, dict) and r.get("command") == "create"})
    for scenario, requests in SCENARIOS.items():
        with tempfile.TemporaryDirectory() as tmp:
            real = {p: os.path.join(tmp, p.strip("/").replace("/", "_")) for p in fake_paths}
            for path in real.values():
                with open(path, "wb") as f:
                    f.truncate(64 << 30)
            ctl = os.path.join(tmp, "ioband.ctl")
            daemon = subprocess.Popen([iobandd, "--state-dir", tmp, "--control", ctl], stderr=subprocess.DEVNULL)
            for _ in range(100):
                if os.path.exists(ctl):
                    break
                time.sleep(0.05)
            for request in requests:
                text = line(request)
                for fake, path in real.items():
                    text = text.replace(fake + " ", path + " ")
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(ctl)
                s.sendall(text.encode() + b"\n")
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
                s.close()
            daemon.terminate()
            daemon.wait()
            state_path = os.path.join(tmp, "state.json")
            if os.path.exists(state_path):
                text = open(state_path).read()
                for fake, path in real.items():
                    text = text.replace(json.dumps(path), json.dumps(fake))
                states[scenario] = text
    return states


def main():
    for scenario, requests in SCENARIOS.items():
        write("control_protocol", scenario, "".join(line(r) + "\n" for r in requests))
        tables = [r["table"] for r in requests if isinstance(r, dict) and r.get("command") == "create"]
        words = [" ".join(r["args"]) for r in requests if isinstance(r, dict) and r.get("command") == "message"]
        write("control_language", scenario, "\n".join(tables + words) + "\n")
    write("control_language", "comments", "# a comment\n\n0 2048 ioband /x.img 1\n0 8 ioband /y 2 4 128\n")
    for i, spec in enumerate(EXPORT_SPECS):
        write("export_spec", str(i), spec)
    write("state_file", "old-version", json.dumps(OLD_STATE, indent=2) + "\n")
    write("state_file", "empty", '{"version": 1, "device_groups": [], "devices": []}\n')
    write("state_file", "damaged", json.dumps(OLD_STATE, indent=2)[:200])
    if len(sys.argv) > 2 and sys.argv[1] == "--iobandd":
        for scenario, text in record_states(sys.argv[2]).items():
            write("state_file", scenario, text)


if __name__ == "__main__":
    main()
