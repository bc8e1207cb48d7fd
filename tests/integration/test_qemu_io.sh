#!/bin/bash
# qemu-io against iobandd: pattern writes at odd offsets and lengths (inside a
# block, across 4 KiB boundaries, the last byte of the export), write zeroes,
# FUA writes, discard, aio writes, writev; then every byte of the export is
# read back through a new connection as runs of the expected pattern (so the
# neighbours of each write are checked unchanged), and for a raw file export
# the backing file itself is compared with what was written.
. "$(dirname "$0")/lib.sh"
requires qemu-io

size=$((16 * MiB))
truncate -s $size "$T/disk.img"
start_server "disk=$T/disk.img" "ram=,backend=memory,size=16M"

# The operations, as data: "write PATTERN OFFSET LENGTH [fua|aio]",
# "zero OFFSET LENGTH", "discard OFFSET LENGTH" (content undefined after),
# "writev PATTERN OFFSET LEN1 LEN2 ...".
cat >"$T/ops" <<EOF
write 0x11 0 65536
write 0xab 1000 3000
write 0xcd 4090 20
write 0x5e 8191 2
write 0x77 65535 131074
write 0x42 $((size - 1)) 1
write 0x99 290000 80000
zero 300000 50000
write 0x3c 1048577 4095 fua
write 0xee $((2 * MiB - 512)) $((MiB + 1024))
discard $((2 * MiB)) $((MiB))
write 0x61 5000000 7000 aio
write 0x62 5007000 7000 aio
writev 0x70 6000001 100 200 300
write 0x01 $((8 * MiB - 1)) 2
write 0x02 $((12 * MiB + 4095)) $((4 * MiB - 4095 - 1))
EOF

# ops -> qemu-io commands; expected image -> read commands for each run of
# equal bytes (skipping discarded ranges); or compare a file with it.
model() {
  "$PY" - "$1" "$T/ops" "$size" "${2:-}" <<'PYEOF'
import sys
mode, ops_path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
image = bytearray(size)
undefined = bytearray(size)  # 1 where the content is not specified (discard)
commands = []
for line in open(ops_path):
    w = line.split()
    if not w:
        continue
    if w[0] == "write":
        pat, off, n = int(w[1], 16), int(w[2]), int(w[3])
        image[off:off + n] = bytes([pat]) * n
        undefined[off:off + n] = bytes(n)
        extra = w[4] if len(w) > 4 else ""
        if extra == "aio":
            commands.append(f"aio_write -P {w[1]} {off} {n}")
        elif extra == "fua":
            commands.append(f"write -f -P {w[1]} {off} {n}")
        else:
            commands.append(f"write -P {w[1]} {off} {n}")
    elif w[0] == "zero":
        off, n = int(w[1]), int(w[2])
        image[off:off + n] = bytes(n)
        undefined[off:off + n] = bytes(n)
        commands.append(f"write -z {off} {n}")
    elif w[0] == "discard":
        off, n = int(w[1]), int(w[2])
        undefined[off:off + n] = b"\1" * n
        commands.append(f"discard {off} {n}")
    elif w[0] == "writev":
        pat, off, lens = int(w[1], 16), int(w[2]), [int(x) for x in w[3:]]
        n = sum(lens)
        image[off:off + n] = bytes([pat]) * n
        undefined[off:off + n] = bytes(n)
        commands.append(f"writev -P {w[1]} {off} " + " ".join(map(str, lens)))
if mode == "commands":
    commands += ["aio_flush", "flush"]
    print("\n".join(commands))
elif mode == "reads":
    # Runs of equal bytes, split where definedness changes too.
    import re
    cuts = sorted({m.start() for a in (image, undefined) for m in re.finditer(rb"(.)\1*", a, re.S)} | {size})
    for i, j in zip(cuts, cuts[1:]):
        if not undefined[i]:
            print(f"read -P {image[i]:#04x} {i} {j - i}")
elif mode == "verify":
    data = open(sys.argv[4], "rb").read()
    if len(data) != size:
        sys.exit(f"{sys.argv[4]}: {len(data)} bytes, expected {size}")
    # Where the content is undefined, take whatever the file has.
    i = 0
    while i < size:
        j = undefined.find(b"\1", i)
        if j < 0:
            break
        k = undefined.find(b"\0", j)
        k = size if k < 0 else k
        image[j:k] = data[j:k]
        i = k
    if data != image:
        i = next(i for i in range(size) if data[i] != image[i])
        sys.exit(f"{sys.argv[4]}: byte {i} is {data[i]:#04x}, expected {image[i]:#04x}")
PYEOF
}

qemu_io() { # URI COMMANDS-FILE
  local args=() cmd out rc
  while IFS= read -r cmd; do args+=(-c "$cmd"); done <"$2"
  set +e
  out=$(run 120 qemu-io -f raw "${args[@]}" "$1" 2>&1)
  rc=$?
  set -e
  echo "$out" >>"$T/qemu-io.log"
  if [ $rc -ne 0 ] || echo "$out" | grep -Eqi 'fail|error|mismatch'; then
    echo "$out" | grep -Ei -B1 'fail|error|mismatch' | head -20 >&2
    return 1
  fi
}

model commands >"$T/commands"
model reads >"$T/reads"
log "$(wc -l <"$T/commands") writes, $(wc -l <"$T/reads") pattern reads"

for name in disk ram; do
  log "qemu-io writes to $name"
  qemu_io "$(uri "$name")" "$T/commands" || fail "qemu-io writes to $name failed"
  log "qemu-io pattern reads of all of $name on a new connection"
  qemu_io "$(uri "$name")" "$T/reads" || fail "qemu-io reads of $name found wrong data"
done

# The raw export wrote exactly these bytes into its backing file.
model verify "$T/disk.img" || fail "disk.img does not hold what qemu-io wrote"

# Reads and writes past the end of the export fail; the export still works.
set +e
out=$(run 60 qemu-io -f raw -c "read $size 512" -c "write -P 0x55 $((size - 256)) 512" "$(uri ram)" 2>&1)
set -e
echo "$out" | grep -q "^wrote [0-9]" && fail "qemu-io wrote past the end of ram: $out"
echo "$out" | grep -q "^read [0-9]" && fail "qemu-io read past the end of ram: $out"
printf 'read -P 0x42 %d 1\n' $((size - 1)) >"$T/last"
qemu_io "$(uri ram)" "$T/last" || fail "ram lost its last byte after requests past its end"

assert_alive
log "ok"
