#!/usr/bin/python3
"""Records the seed corpus of the NBD harnesses from real clients.

Starts iobandd with a 1 MiB memory export named "fuzz" (the harnesses'
export), puts a recording proxy in front of its socket, and runs nbdinfo,
nbdsh, qemu-img, qemu-io and nbdcopy through it. What each client sent after
the greeting becomes a seed of nbd_handshake (whole, after the shape byte
0), and what it sent after its GO/EXPORT_NAME a seed of nbd_transmission
(after two bytes naming the handshake the harness should make instead:
shape 0, then structured replies and base:allocation when the client asked
for them). Run from the source tree: fuzz/record_seeds.py build/bin/iobandd
"""

import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
OPTION_MAGIC = 0x49484156454F5054


def proxy(listen_path, server_path, recordings):
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(listen_path)
    lsock.listen(16)

    def pipe(src, dst, record):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if record is not None:
                record.extend(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def serve():
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(server_path)
            record = bytearray()
            recordings.append(record)
            threading.Thread(target=pipe, args=(client, server, record), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return lsock


def split_handshake(stream):
    """(transmission bytes, structured, base_allocation) or None."""
    at = 4
    structured = base_allocation = False
    while at + 16 <= len(stream):
        magic, option, length = struct.unpack(">QII", stream[at:at + 16])
        if magic != OPTION_MAGIC:
            return None
        data = stream[at + 16:at + 16 + length]
        at += 16 + length
        if option == 8:
            structured = True
        elif option == 10 and b"base:allocation" in data:
            base_allocation = True
        elif option in (1, 7):
            return stream[at:], structured, base_allocation
    return None


def main():
    iobandd = sys.argv[1] if len(sys.argv) > 1 else "build/bin/iobandd"
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "nbd.sock")
        front = os.path.join(tmp, "front.sock")
        daemon = subprocess.Popen([iobandd, "--state-dir", tmp, "--socket", sock, "--control",
                                   os.path.join(tmp, "ctl"), "--export",
                                   "fuzz=mem,backend=memory,size=1M,description=fuzzing export"],
                                  stderr=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        recordings = []
        lsock = proxy(front, sock, recordings)
        uri = f"nbd+unix:///fuzz?socket={front}"
        list_uri = f"nbd+unix://?socket={front}"
        img = f"json:{{\"file.driver\":\"nbd\",\"file.path\":\"{front}\",\"file.export\":\"fuzz\"}}"
        clients = {
            "nbdinfo": ["nbdinfo", uri],
            "nbdinfo-list": ["nbdinfo", "--list", list_uri],
            "nbdinfo-map": ["nbdinfo", "--map", uri],
            "nbdsh-io": ["nbdsh", "-c", "\n".join([
                "h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)", f"h.connect_uri('{uri}')",
                "h.pwrite(b'a' * 4096, 0)", "h.pwrite(b'b' * 512, 8192, nbd.CMD_FLAG_FUA)",
                "h.pread(4096, 0)", "h.pread(512, 65536)", "h.flush()", "h.trim(4096, 4096)",
                "h.zero(8192, 16384)", "h.cache(4096, 0)",
                "h.block_status(65536, 0, lambda *a: 0)",
                "h.pread_structured(4096, 0, lambda *a: 0)"])],
            "nbdsh-nosr": ["nbdsh", "-c", "\n".join([
                "h.set_request_structured_replies(False)", f"h.connect_uri('{uri}')",
                "h.pwrite(b'c' * 1024, 1024)", "h.pread(2048, 0)"])],
            "nbdsh-oldname": ["nbdsh", "-c", "\n".join([
                "h.set_opt_mode(True)", f"h.connect_uri('{uri}')", "h.opt_list(lambda n, d: 0)",
                "h.opt_info()", "h.opt_list_meta_context(lambda n: 0)", "h.opt_go()",
                "h.pread(512, 0)"])],
            "qemu-img-info": ["qemu-img", "info", img],
            "qemu-img-map": ["qemu-img", "map", "--output=json", img],
            "qemu-io": ["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 16k", "-c", "read -P 0x55 0 16k",
                        "-c", "discard 0 4k", "-c", "write -z 64k 4k", "-c", "flush", img],
            "nbdcopy": ["nbdcopy", uri, "null:"],
        }
        names = []
        for name, argv in clients.items():
            before = len(recordings)
            # nbdsh runs "python3": Debian's, which has the nbd module.
            env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
            result = subprocess.run(argv, capture_output=True, timeout=60, env=env)
            if result.returncode != 0:
                print(f"{name}: exit {result.returncode}: {result.stderr.decode()[:300]}", file=sys.stderr)
            time.sleep(0.2)
            for i, record in enumerate(recordings[before:]):
                names.append((f"{name}-{i}" if i else name, bytes(record)))
        lsock.close()
        daemon.terminate()
        daemon.wait()

    os.makedirs(os.path.join(CORPUS, "nbd_handshake"), exist_ok=True)
    os.makedirs(os.path.join(CORPUS, "nbd_transmission"), exist_ok=True)
    for name, stream in names:
        if not stream:
            continue
        with open(os.path.join(CORPUS, "nbd_handshake", f"seed-{name}"), "wb") as f:
            f.write(b"\x00" + stream)
        split = split_handshake(stream)
        if split and split[0]:
            rest, structured, base_allocation = split
            with open(os.path.join(CORPUS, "nbd_transmission", f"seed-{name}"), "wb") as f:
                f.write(bytes([0, (1 if structured else 0) | (2 if base_allocation else 0)]) + rest)
        print(f"{name}: {len(stream)} bytes")


if __name__ == "__main__":
    main()
