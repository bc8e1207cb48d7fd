#!/bin/bash
# A Linux guest (QEMU, TCG) on two qcow2 overlays served by iobandd: vda a
# 64 KiB-cluster overlay on a raw base, vdb a 16 KiB-cluster overlay on a
# 64 KiB-cluster qcow2 base. The guest writes extents with dd (O_DIRECT,
# fsync): whole clusters, a few sectors inside one cluster, writes across
# cluster boundaries, the last cluster of the disk, an in-place rewrite. It
# drops its cache and reads them and the whole disk back. Then, on the host:
# a second client (qemu-img) reads the same through the export; after the
# daemon stops, qemu-img check finds the overlays clean, qemu-img compare
# (QEMU's own qcow2 driver) finds them equal to raw files that received the
# same writes, only the written clusters are allocated in the overlays, and
# the bases are unchanged.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guest.sh"
requires qemu-img md5sum jq
guest_requires

size=$((32 * MiB))
head -c "$size" /dev/urandom >"$T/base.raw"
qemu-img convert -q -f raw -O qcow2 -o cluster_size=64k "$T/base.raw" "$T/base.qcow2" || fail "qemu-img convert"
qemu-img create -q -f qcow2 -o cluster_size=64k -b base.raw -F raw "$T/a.qcow2" || fail "qemu-img create a"
qemu-img create -q -f qcow2 -o cluster_size=16k -b base.qcow2 -F qcow2 "$T/b.qcow2" || fail "qemu-img create b"
md5sum "$T/base.raw" "$T/base.qcow2" >"$T/bases.md5"

guest_sample_plan "$size"
cp "$T/base.raw" "$T/want.raw"
guest_apply_plan "$T/plan" "$T/pattern" "$T/want.raw"
guest_expect "$T/plan" "$T/expect" vda="$T/want.raw" vdb="$T/want.raw"
guest_plan_script >"$T/guest.sh"

start_server "a=$T/a.qcow2" "b=$T/b.qcow2"
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

# The overlay holds exactly the clusters the guest wrote: copy-on-write
# filled the rest of each partly written cluster from the base, and nothing
# else was allocated.
allocated_clusters() { # IMAGE CLUSTER: clusters with data in the image itself
  qemu-img map -f qcow2 --output=json "$1" |
    jq -r --argjson c "$2" '.[] | select(.depth == 0 and .data) |
      range(.start / $c; (.start + .length) / $c) | floor' | sort -n | uniq
}
written_clusters() { # CLUSTER
  local offset length source block
  while read -r offset length source block; do
    seq $((offset / $1)) $(((offset + length - 1) / $1))
  done <"$T/plan" | sort -n | uniq
}
for pair in a:65536 b:16384; do
  name=${pair%%:*} cluster=${pair#*:}
  allocated_clusters "$T/$name.qcow2" "$cluster" >"$T/$name.allocated"
  written_clusters "$cluster" >"$T/$name.written"
  diff "$T/$name.written" "$T/$name.allocated" >"$T/$name.diff" || {
    head -20 "$T/$name.diff" >&2
    fail "$name.qcow2: the clusters allocated are not the clusters the guest wrote (< written, > allocated)"
  }
  log "$name.qcow2: $(wc -l <"$T/$name.allocated") clusters of $cluster bytes allocated, as written"
done
