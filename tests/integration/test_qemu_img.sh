#!/bin/bash
# qemu-img against iobandd: `qemu-img convert` of 64 MiB of random data into
# an export (a raw file and a RAM disk), `qemu-img compare` back through NBD,
# the backing file holds exactly the data, and compare notices a difference.
. "$(dirname "$0")/lib.sh"
requires qemu-img cmp

size=$((64 * MiB))
random_file "$T/src.raw" $size
truncate -s $size "$T/disk.img"

start_server "disk=$T/disk.img" "ram=,backend=memory,size=64M"

for name in disk ram; do
  u=$(uri "$name")
  log "qemu-img info $u"
  info=$(run 60 qemu-img info --output=json -f raw "$u") || fail "qemu-img info $name failed"
  echo "$info" | grep -q "\"virtual-size\": $size" || fail "qemu-img info $name: virtual size is not $size: $info"

  log "qemu-img convert src.raw -> $name"
  run 120 qemu-img convert -n -f raw -O raw "$T/src.raw" "$u" ||
    fail "qemu-img convert into $name failed"

  log "qemu-img compare src.raw $name"
  run 120 qemu-img compare -f raw -F raw "$T/src.raw" "$u" ||
    fail "qemu-img compare: $name differs from what was converted into it"
done

# What the daemon acknowledged is in the backing file, byte for byte.
cmp "$T/src.raw" "$T/disk.img" || fail "disk.img differs from src.raw after qemu-img convert"

# compare must notice a single changed byte (it really reads through NBD).
cp "$T/src.raw" "$T/changed.raw"
printf '\x5a' | dd of="$T/changed.raw" bs=1 seek=$((size - 12345)) conv=notrunc status=none
if cmp -s "$T/src.raw" "$T/changed.raw"; then
  printf '\xa5' | dd of="$T/changed.raw" bs=1 seek=$((size - 12345)) conv=notrunc status=none
fi
set +e
run 120 qemu-img compare -f raw -F raw "$T/changed.raw" "$(uri ram)"
rc=$?
set -e
[ $rc -eq 1 ] || fail "qemu-img compare of a changed copy against ram exited $rc, expected 1 (images differ)"

# Convert back out of the export into a new qcow2 file and compare.
run 120 qemu-img convert -f raw -O qcow2 "$(uri disk)" "$T/out.qcow2" || fail "qemu-img convert out of disk failed"
run 120 qemu-img compare -f raw -F qcow2 "$T/src.raw" "$T/out.qcow2" || fail "data read back from disk differs"

assert_alive
log "ok"
