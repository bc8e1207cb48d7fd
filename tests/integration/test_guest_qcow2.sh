#!/bin/bash
# A Linux guest (QEMU, TCG) on two qcow2 overlays served by iobandd: vda a
# 64 KiB-cluster overlay on a raw base, vdb a 16 KiB-cluster overlay on a
# 64 KiB-cluster qcow2 base. The guest writes extents with dd (O_DIRECT,
# fsync): whole clusters, a few sectors inside one cluster, writes across
# cluster boundaries, the last cluster of the disk, an in-place rewrite,
# eight writers at once into the same clusters; and
# zeroes (NBD WRITE_ZEROES, through detect-zeroes=unmap) and discards (NBD
# TRIM) of whole and partial clusters. It drops its cache and reads them and
# the whole disk back. Then, on the host: a second client (qemu-img) reads
# the same through the export; after the daemon stops, qemu-img check finds
# the overlays clean (no leak either), qemu-img compare (QEMU's own qcow2
# driver) finds them equal to raw files that received the same writes, each
# cluster is data, zero or unallocated as the plan implies (qemu-img map),
# and the bases are unchanged.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guest.sh"
requires qemu-img md5sum
guest_requires

size=$((32 * MiB))
head -c "$size" /dev/urandom >"$T/base.raw"
qemu-img convert -q -f raw -O qcow2 -o cluster_size=64k "$T/base.raw" "$T/base.qcow2" || fail "qemu-img convert"
qemu-img create -q -f qcow2 -o cluster_size=64k -b base.raw -F raw "$T/a.qcow2" || fail "qemu-img create a"
qemu-img create -q -f qcow2 -o cluster_size=16k -b base.qcow2 -F qcow2 "$T/b.qcow2" || fail "qemu-img create b"
md5sum "$T/base.raw" "$T/base.qcow2" >"$T/bases.md5"

guest_sample_plan "$size"
# Zeroes and discards, 64 KiB-aligned (whole clusters of both overlays)
# unless said: discard written clusters, discard and zero clusters the base
# shows through, zero part of a discarded cluster, part of a written one,
# part of one the base shows through, and write into a discarded cluster.
cat >>"$T/plan" <<EOF
$((17 * MiB)) $MiB discard 65536
$((10 * MiB)) $((512 * 1024)) discard 65536
$((12 * MiB)) $((256 * 1024)) zero 65536
$((17 * MiB + 4096)) 8192 zero 4096
$((MiB - 4096)) 4096 zero 4096
$((14 * MiB + 1024)) 2048 zero 512
$((17 * MiB + 65536 + 512)) 1024 $((5 * MiB + 300000)) 512
EOF
# Eight writers at once, each 24 KiB in 4 KiB requests, side by side from
# 26 MiB: allocating writes from different requests into the same clusters.
for j in 0 1 2 3 4 5 6 7; do
  echo "$((26 * MiB + j * 24576)) 24576 $((5 * MiB + 400000 + j * 24576)) 4096 &"
done >>"$T/plan"
cp "$T/base.raw" "$T/want.raw"
guest_apply_plan "$T/plan" "$T/pattern" "$T/want.raw"
guest_expect "$T/plan" "$T/expect" vda="$T/want.raw" vdb="$T/want.raw"
guest_plan_script >"$T/guest.sh"

start_server "a=$T/a.qcow2" "b=$T/b.qcow2"
# QEMU passes the guest's discards on as NBD TRIM, and sends the zeroes it
# finds in writes as NBD WRITE_ZEROES that may unmap.
GUEST_DRIVE_OPTIONS=,discard=unmap,detect-zeroes=unmap
guest_file "$T/plan" "$T/pattern" "$T/expect"
guest_run "$T/guest.sh" a b
grep -F 'read back as expected' "$GUEST_CONSOLE" | tr -d '\r' >&2
assert_alive
for name in a b; do
  run 60 qemu-img compare -q -f raw -F raw "$(uri "$name")" "$T/want.raw" ||
    fail "export $name, read by qemu-img after the guest, differs from the oracle"
done
stop_servers

md5sum -c --quiet "$T/bases.md5" || fail "a base image changed"
for name in a b; do
  qemu-img check -q "$T/$name.qcow2" || fail "qemu-img check: $name.qcow2 is not clean"
  qemu-img compare -q -f qcow2 -F raw "$T/$name.qcow2" "$T/want.raw" ||
    fail "$name.qcow2, read by QEMU's qcow2 driver, differs from the oracle"
done

# The overlays hold exactly the clusters the plan implies, as QEMU's qcow2
# driver would leave them: a written cluster is data (copy-on-write filled
# the rest of a partly written one); a whole cluster zeroed or discarded is
# a zero cluster (its base no longer shows); zeroes in part of a cluster
# leave a data or zero cluster as it was and allocate one the base showed
# through; nothing else is allocated.
for pair in a:65536 b:16384; do
  name=${pair%%:*} cluster=${pair#*:}
  qemu-img map -f qcow2 --output=json "$T/$name.qcow2" >"$T/$name.map" || fail "qemu-img map $name.qcow2"
  "$PY" - "$T/plan" "$T/$name.map" "$cluster" <<'EOF' ||
import json, sys
plan, mapfile, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3])
want = {}
for line in open(plan):
    offset, length, source = line.split()[:3]
    offset, length = int(offset), int(length)
    for c in range(offset // cluster, (offset + length - 1) // cluster + 1):
        whole = offset <= c * cluster and (c + 1) * cluster <= offset + length
        state = want.get(c, "base")
        if source in ("zero", "discard") and whole:
            want[c] = "zero"
        elif source == "discard":
            pass
        elif source == "zero":
            want[c] = "data" if state == "base" else state
        else:
            want[c] = "data"
want = {c: k for c, k in want.items() if k != "base"}
got = {}
for e in json.load(open(mapfile)):
    kind = "data" if e["data"] else "zero" if e["zero"] else None
    if e["depth"] == 0 and kind:
        for c in range(e["start"] // cluster, (e["start"] + e["length"]) // cluster):
            got[c] = kind
for c in sorted(set(want) | set(got)):
    if want.get(c) != got.get(c):
        print(f"cluster {c} (offset {c * cluster}): {got.get(c, 'unallocated')}, expected {want.get(c, 'unallocated')}")
data = sum(k == "data" for k in got.values())
print(f"# {data} data and {len(got) - data} zero clusters of {cluster} bytes", file=sys.stderr)
sys.exit(want != got)
EOF
    fail "$name.qcow2: the clusters are not as the guest's writes, zeroes and discards leave them"
done
