# shellcheck shell=bash
# A real Linux guest for integration tests: QEMU (TCG) boots Debian's cloud
# kernel with a busybox initramfs made here, its virtio disks on NBD exports,
# runs a script given by the test, reports on the serial console and powers
# off. Source it after lib.sh:
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/guest.sh"
#   guest_requires                       skip (77) unless QEMU, busybox, cpio
#                                        and the kernel are there
#   start_server "top=$T/top.qcow2"
#   guest_file "$T/pattern"              copied to /data/pattern in the guest
#   guest_run "$T/script.sh" top [...]   boot with /dev/vda=top, vdb=...
#   GUEST_DRIVE_OPTIONS=,discard=unmap   more -drive options, for every disk
#
# The script runs as `sh -e` under busybox (every applet on PATH) with the
# disks' device nodes present, /data holding the files given by guest_file,
# and a tmpfs at /tmp. Its output, and the kernel's, go to the console
# ($GUEST_CONSOLE). guest_run fails the test, printing the console, unless
# the script exits 0 and the guest powers off before $GUEST_TIMEOUT seconds
# (default 120; a boot takes a few seconds).
#
# The kernel comes from scripts/guest-kernel (run by scripts/setup) in
# $IOBAND_SOURCE/var/guest, or IOBAND_GUEST_DIR. TCG, not KVM: KVM is not
# there on every machine the tests run on (containers, CI), and where it is,
# QEMU 7.2 has been seen to abort on an MSR; a few seconds of boot are cheap.

GUEST_DIR=${IOBAND_GUEST_DIR:-$IOBAND_SOURCE/var/guest}
GUEST_TIMEOUT=${IOBAND_GUEST_TIMEOUT:-120}
GUEST_BUSYBOX=${IOBAND_GUEST_BUSYBOX:-/bin/busybox}
GUEST_APPEND=${IOBAND_GUEST_APPEND:-} # more kernel arguments (loglevel=7 to see it all)
GUEST_CONSOLE=
GUEST_BOOTS=0
GUEST_FILES=()
GUEST_DRIVE_OPTIONS=

guest_requires() {
  requires qemu-system-x86_64 cpio file
  [ -x "$GUEST_BUSYBOX" ] || skip "no busybox at $GUEST_BUSYBOX (install busybox-static)"
  # The guest has no C library: a dynamically linked busybox (Debian's
  # package busybox rather than busybox-static) cannot run there.
  LC_ALL=C file -L "$GUEST_BUSYBOX" | grep -q 'statically linked' ||
    skip "$GUEST_BUSYBOX is not statically linked (install busybox-static)"
  if [ ! -f "$GUEST_DIR/vmlinuz" ]; then
    log "no guest kernel in $GUEST_DIR: running scripts/guest-kernel"
    IOBAND_GUEST_DIR=$GUEST_DIR "$IOBAND_SOURCE/scripts/guest-kernel" >&2 ||
      skip "no guest kernel in $GUEST_DIR and scripts/guest-kernel failed"
  fi
}

# guest_file PATH...: files the next boots find in /data.
guest_file() {
  GUEST_FILES+=("$@")
}

# The guest's /init: mount the pseudo file systems, load the virtio modules,
# wait for the disks, run the test's script, say how it ended, power off.
# `poweroff -f` ends QEMU through ACPI; a kernel panic reboots (panic=-1),
# which -no-reboot turns into an exit too, without the line guest_run wants.
_guest_init() {
  cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
depmod
modprobe virtio_pci
modprobe virtio_blk
disks=$(cat /etc/disks)
for i in $(seq 100); do
  missing=
  for d in $disks; do [ -b /dev/$d ] || missing="$missing $d"; done
  [ -z "$missing" ] && break
  sleep 0.1
done
if [ -n "$missing" ]; then
  echo "ioband-guest: no disk$missing"
  dmesg | tail -20
  rc=125
else
  echo "ioband-guest: up $(cut -d' ' -f1 /proc/uptime) s, running the test's script (disks: $disks)"
  cd /tmp
  sh -e /test.sh
  rc=$?
fi
sync
echo "ioband-guest: exit $rc (up $(cut -d' ' -f1 /proc/uptime) s)"
poweroff -f
EOF
}

# guest_run SCRIPT EXPORT...: boot a guest whose /dev/vda, vdb, ... are the
# exports (started with start_server), run SCRIPT in it; fail the test unless
# it exits 0.
guest_run() {
  local script=$1
  shift
  [ $# -le 26 ] || fail "guest_run: at most 26 disks"
  local boot=$((GUEST_BOOTS++))
  local root=$T/guest$boot letters=abcdefghijklmnopqrstuvwxyz disks=() drives=() name i path
  for ((i = 0; i < $#; i++)); do
    disks+=("vd${letters:i:1}")
  done
  mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc,data,lib/modules}
  cp "$GUEST_BUSYBOX" "$root/bin/busybox"
  cp -r "$GUEST_DIR/modules/." "$root/lib/modules/"
  _guest_init >"$root/init"
  chmod +x "$root/init"
  cp "$script" "$root/test.sh"
  echo "${disks[*]}" >"$root/etc/disks"
  for path in "${GUEST_FILES[@]}"; do
    cp "$path" "$root/data/"
  done
  # Uncompressed: the kernel unpacks it at once, and random test data would
  # not compress anyway.
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$T/initramfs$boot.cpio" ||
    fail "could not make the guest's initramfs"
  rm -rf "$root"

  for name; do
    path=$(sock "$name")
    # QEMU's option syntax doubles a comma inside a value.
    drives+=(-drive "file=nbd+unix:///$name?socket=${path//,/,,},if=virtio,format=raw,cache=none$GUEST_DRIVE_OPTIONS")
  done
  GUEST_CONSOLE=$T/console$boot.log
  local started rc=0
  started=$(date +%s%N)
  log "booting guest $boot with ${*} as ${disks[*]}"
  timeout --kill-after=10 "$GUEST_TIMEOUT" qemu-system-x86_64 \
    -accel tcg -machine pc -cpu max -smp 1 -m 256 \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$GUEST_CONSOLE" \
    -kernel "$GUEST_DIR/vmlinuz" -initrd "$T/initramfs$boot.cpio" \
    -append "console=ttyS0 panic=-1 loglevel=4 $GUEST_APPEND" \
    "${drives[@]}" </dev/null >"$T/qemu$boot.log" 2>&1 || rc=$?
  local ms=$((($(date +%s%N) - started) / 1000000))
  log "guest $boot ran $((ms / 1000)).$(printf %03d $((ms % 1000))) s (qemu exit $rc;" \
    "$(sed -n 's/^ioband-guest: up \([0-9.]*\) s.*/kernel and init up in \1 s/p' "$GUEST_CONSOLE"))"
  local status
  status=$(sed -n 's/^ioband-guest: exit \([0-9]*\).*/\1/p' "$GUEST_CONSOLE" | tail -n 1)
  if [ "$rc" -ne 0 ] || [ "$status" != 0 ]; then
    echo "--- QEMU ($T/qemu$boot.log)" >&2
    cat "$T/qemu$boot.log" >&2
    echo "--- guest console ($GUEST_CONSOLE)" >&2
    tr -d '\r' <"$GUEST_CONSOLE" >&2
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      fail "guest $boot did not power off within ${GUEST_TIMEOUT}s"
    elif [ "$rc" -ne 0 ]; then
      fail "QEMU exited with $rc"
    elif [ -z "$status" ]; then
      fail "guest $boot stopped before its script ended (panic?)"
    else
      fail "the guest's script exited with $status"
    fi
  fi
}

# --- A workload: extents written with dd, read back, checked in the guest ---
#
# A plan is a file of lines "OFFSET LENGTH SOURCE BLOCK" (bytes): write
# LENGTH bytes of the pattern file, from SOURCE, at OFFSET of the disk, in dd
# blocks of BLOCK bytes (OFFSET and BLOCK multiples of 512, BLOCK divides
# LENGTH). Later lines may overwrite earlier ones. SOURCE "zero" writes
# zeroes from /dev/zero (with detect-zeroes=unmap in GUEST_DRIVE_OPTIONS,
# QEMU sends them as NBD WRITE_ZEROES); "discard" is blkdiscard of the range,
# which the oracle takes as zeroes: use it only where the export promises
# that (whole clusters of a qcow2 v3 image, as in QEMU). A fifth field "&"
# runs the line in the background: it goes on at once with the next line,
# and a line without "&" first waits for all of them, so lines that run
# together must not overlap.
#
#   guest_sample_plan SIZE                  a plan in $T/plan, $T/pattern
#   guest_apply_plan PLAN PATTERN IMAGE     the same writes on a host file:
#                                           the oracle
#   guest_expect PLAN OUT DISK=IMAGE...     what the guest must read: the md5
#                                           of each extent and of each whole
#                                           disk, taken from the oracles
#   guest_plan_script >SCRIPT               the guest's side: with /data/plan,
#                                           /data/pattern and /data/expect, it
#                                           writes each extent with O_DIRECT
#                                           and fsync, drops the page cache,
#                                           reads every extent and every whole
#                                           disk back with O_DIRECT and
#                                           compares the md5s

# guest_sample_plan SIZE: $T/plan and $T/pattern for a disk of SIZE bytes (at
# least 32 MiB): whole 64 KiB clusters, a few sectors inside one cluster,
# writes across cluster boundaries (64 KiB and 16 KiB), 4 MiB in 1 MiB
# requests, an odd request size at an odd sector, the last 64 KiB of the
# disk, and a rewrite of sectors written before.
guest_sample_plan() {
  local size=$1 MiB=$((1024 * 1024))
  head -c $((6 * MiB)) /dev/urandom >"$T/pattern"
  cat >"$T/plan" <<EOF_PLAN
0 $MiB 0 65536
$((3 * MiB + 3072)) 5120 $MiB 512
$((7 * MiB - 2048)) 4096 $((MiB + 12288)) 4096
$((16 * MiB)) $((4 * MiB)) $((MiB + 16384)) $MiB
$((24 * MiB + 1536)) 200704 $((5 * MiB + 20480)) 28672
$((size - 65536)) 65536 $((5 * MiB + 221184)) 65536
524288 8192 $((5 * MiB + 286720)) 512
EOF_PLAN
}

guest_apply_plan() {
  local plan=$1 pattern=$2 image=$3 offset length source block
  while read -r offset length source block _; do
    case $source in
      zero | discard) dd if=/dev/zero of="$image" bs="$block" count=$((length / block)) seek="$offset" \
        oflag=seek_bytes conv=notrunc status=none ;;
      *) dd if="$pattern" of="$image" bs="$block" count=$((length / block)) skip="$source" seek="$offset" \
        iflag=skip_bytes,fullblock oflag=seek_bytes conv=notrunc status=none ;;
    esac ||
      fail "could not apply '$offset $length $source $block' to $image"
  done <"$plan"
}

guest_expect() {
  local plan=$1 out=$2 offset length source block disk image
  shift 2
  : >"$out"
  while read -r offset length source block _; do
    echo "extent $offset $(dd if="${1#*=}" bs="$block" count=$((length / block)) skip="$offset" \
      iflag=skip_bytes status=none | md5sum | cut -d' ' -f1)" >>"$out"
  done <"$plan"
  for disk; do
    image=${disk#*=}
    echo "disk ${disk%%=*} $(md5sum <"$image" | cut -d' ' -f1)" >>"$out"
  done
}

guest_plan_script() {
  cat <<'EOF_GUEST'
disks=$(cat /etc/disks)
write_extent() { # DISK OFFSET LENGTH SOURCE BLOCK
  # fsync: the disk has a write cache (cache=none), so this is a FLUSH.
  case $4 in
    zero) dd if=/dev/zero of=/dev/$1 bs=$5 count=$(($3 / $5)) seek=$2 oflag=seek_bytes,direct conv=fsync ;;
    discard) blkdiscard -o $2 -l $3 /dev/$1 ;;
    *) dd if=/data/pattern of=/dev/$1 bs=$5 count=$(($3 / $5)) skip=$4 seek=$2 \
      iflag=skip_bytes,fullblock oflag=seek_bytes,direct conv=fsync ;;
  esac 2>/tmp/err.$2 || { cat /tmp/err.$2; echo "$4 $2+$3 on $1 failed" | tee -a /tmp/failed; }
}
for d in $disks; do
  while read -r offset length source block background; do
    if [ "$background" = "&" ]; then
      write_extent $d $offset $length $source $block &
    else
      wait
      write_extent $d $offset $length $source $block
    fi
  done </data/plan
  wait
  [ ! -e /tmp/failed ] || exit 1
  echo "wrote $(wc -l </data/plan) extents to $d (up $(cut -d' ' -f1 /proc/uptime) s)"
done
echo 3 >/proc/sys/vm/drop_caches
bad=0
for d in $disks; do
  while read -r offset length source block _; do
    sum=$(dd if=/dev/$d bs=$block count=$((length / block)) skip=$offset iflag=skip_bytes,direct 2>/dev/null |
      md5sum | cut -d' ' -f1)
    want=$(sed -n "s/^extent $offset //p" /data/expect)
    [ "$sum" = "$want" ] || { echo "$d: extent $offset+$length reads back md5 $sum, expected $want"; bad=1; }
  done </data/plan
  sum=$(dd if=/dev/$d bs=1048576 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  want=$(sed -n "s/^disk $d //p" /data/expect)
  if [ "$sum" = "$want" ]; then
    echo "$d: every extent and the whole disk (md5 $sum) read back as expected (up $(cut -d' ' -f1 /proc/uptime) s)"
  else
    echo "$d: whole disk md5 $sum, expected $want"
    bad=1
  fi
done
exit $bad
EOF_GUEST
}
