#!/bin/bash
# File systems in a Linux guest (QEMU, TCG) on qcow2 overlays, across a
# restart of iobandd and a second boot:
#   vda  an ioband device (iobandctl create, format found from the header)
#        on an overlay over an empty raw base: the guest makes an ext2 file
#        system (busybox mke2fs), mounts it, writes files, unmounts;
#   vdb  an --export of an overlay over a raw base that holds an ext2 file
#        system made on the host (mke2fs -d): the guest mounts it, checks the
#        host's files (read from the base), adds its own, deletes one.
# Then it fills and frees space on both and runs fstrim (discard=unmap).
# iobandd restarts (the ioband device comes back from state.json); a second
# guest mounts both and finds every file as written. On the host, both
# overlays pass qemu-img check and hold zero clusters from the trims, their
# file systems pass e2fsck -fn, a file the guest wrote reads back through
# debugfs, and the bases are unchanged.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guest.sh"
requires qemu-img md5sum mke2fs e2fsck debugfs cmp jq
guest_requires
IOBANDCTL=${IOBANDCTL:-$IOBAND_SOURCE/build/bin/iobandctl}
[ -x "$IOBANDCTL" ] || fail "iobandctl not found at $IOBANDCTL"

size=$((64 * MiB))
head -c $((3 * MiB + 12345)) /dev/urandom >"$T/pattern"
truncate -s "$size" "$T/empty.raw"
mkdir -p "$T/tree/host/deep/er"
cp "$T/pattern" "$T/tree/host/pattern"
seq 1 100000 >"$T/tree/host/deep/er/numbers"
echo "delete me" >"$T/tree/host/remove-me"
mke2fs -q -F -t ext2 -b 4096 -d "$T/tree" "$T/fs.raw" $((size / 1024))k || fail "mke2fs -d on the host"
md5sum "$T/empty.raw" "$T/fs.raw" >"$T/bases.md5"
qemu-img create -q -f qcow2 -o cluster_size=64k -b empty.raw -F raw "$T/a.qcow2" || fail "qemu-img create a"
qemu-img create -q -f qcow2 -o cluster_size=64k -b fs.raw -F raw "$T/b.qcow2" || fail "qemu-img create b"
guest_file "$T/pattern"

# What both boots check: the files the guest writes (made again from
# /data/pattern and their numbers, so nothing in the file system is its own
# oracle). The small files are written and read with shell builtins only: a
# process costs tens of milliseconds in a TCG guest.
cat >"$T/check.sh" <<'EOF'
check_files() { # DIR
  cmp /data/pattern "$1/pattern"
  dd if=/data/pattern bs=4096 skip=7 count=100 2>/dev/null | cmp - "$1/slice"
  i=1
  while [ $i -le 300 ]; do
    { IFS= read -r a && IFS= read -r b && ! IFS= read -r c; } <"$1/small/f$i" &&
      [ "$a" = "small file $i" ] && [ "$b" = "$((i * i * 7919))" ] ||
      { echo "$1/small/f$i: wrong content"; exit 1; }
    i=$((i + 1))
  done
  [ "$(ls "$1/small" | wc -l)" = 300 ]
  echo "$1: pattern, slice and 300 small files read back"
}
check_host_files() { # DIR
  cmp /data/pattern "$1/host/pattern"
  seq 1 100000 | cmp - "$1/host/deep/er/numbers"
}
EOF

cat "$T/check.sh" - >"$T/first.sh" <<'EOF'
write_files() { # DIR
  cp /data/pattern "$1/pattern"
  dd if=/data/pattern of="$1/slice" bs=4096 skip=7 count=100 2>/dev/null
  mkdir "$1/small"
  i=1
  while [ $i -le 300 ]; do
    printf 'small file %d\n%d\n' $i $((i * i * 7919)) >"$1/small/f$i"
    i=$((i + 1))
  done
}
mkdir -p /mnt/a /mnt/b
mke2fs -q /dev/vda
mount -t ext2 /dev/vda /mnt/a
write_files /mnt/a
mount -t ext2 /dev/vdb /mnt/b
check_host_files /mnt/b
echo "vdb: the host's files read back from the base"
mkdir /mnt/b/guest
write_files /mnt/b/guest
rm /mnt/b/host/remove-me
# Free space handed back: the overlays' clusters under it are unmapped
# (NBD TRIM), and nothing in use may go with them.
for m in /mnt/a /mnt/b; do
  cp /data/pattern $m/scratch
  sync
  rm $m/scratch
  fstrim -v $m
done
umount /mnt/a
umount /mnt/b
# Mounted again, the cache is gone: the files come from the disks.
echo 3 >/proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/vda /mnt/a
check_files /mnt/a
umount /mnt/a
EOF

cat "$T/check.sh" - >"$T/second.sh" <<'EOF'
mkdir -p /mnt/a /mnt/b
mount -t ext2 -o ro /dev/vda /mnt/a
mount -t ext2 -o ro /dev/vdb /mnt/b
check_files /mnt/a
check_files /mnt/b/guest
check_host_files /mnt/b
[ ! -e /mnt/b/host/remove-me ]
echo "vdb: the host's files are there, the deleted one is not"
umount /mnt/a
umount /mnt/b
EOF

start_server "b=$T/b.qcow2"
echo "0 $((size / 512)) ioband $T/a.qcow2 1" | run 30 "$IOBANDCTL" --control "$T/state/ioband.ctl" create fs1 ||
  fail "iobandctl create fs1"
SOCKETS[fs1]=$T/nbd.sock
GUEST_DRIVE_OPTIONS=,discard=unmap
guest_run "$T/first.sh" fs1 b
assert_alive
stop_servers

log "restarting iobandd: fs1 comes back from state.json"
start_server "b=$T/b.qcow2"
guest_run "$T/second.sh" fs1 b
grep -E '^(/mnt|vdb)' "$GUEST_CONSOLE" | tr -d '\r' >&2
assert_alive
stop_servers

md5sum -c --quiet "$T/bases.md5" || fail "a base image changed"
for name in a b; do
  qemu-img map -f qcow2 --output=json "$T/$name.qcow2" >"$T/$name.map" || fail "qemu-img map $name.qcow2"
  zeroes=$(jq '[.[] | select(.depth == 0 and .zero and (.data | not)) | .length] | add // 0' "$T/$name.map")
  [ "$zeroes" -gt 0 ] || fail "$name.qcow2 has no zero cluster: the guest's fstrim did not reach it"
  log "$name.qcow2: $zeroes bytes of zero clusters after fstrim"
done
for name in a b; do
  qemu-img check -q "$T/$name.qcow2" || fail "qemu-img check: $name.qcow2 is not clean"
  qemu-img convert -f qcow2 -O raw "$T/$name.qcow2" "$T/$name.raw" || fail "qemu-img convert $name.qcow2"
  e2fsck -fn "$T/$name.raw" >"$T/$name.fsck" 2>&1 || {
    cat "$T/$name.fsck" >&2
    fail "e2fsck finds errors in the file system the guest left in $name.qcow2"
  }
done
debugfs -R "dump /pattern $T/a.pattern" "$T/a.raw" 2>/dev/null
cmp "$T/pattern" "$T/a.pattern" || fail "/pattern of a.qcow2, read by debugfs, differs"
debugfs -R "dump /guest/slice $T/b.slice" "$T/b.raw" 2>/dev/null
dd if="$T/pattern" bs=4096 skip=7 count=100 status=none | cmp - "$T/b.slice" ||
  fail "/guest/slice of b.qcow2, read by debugfs, differs"
