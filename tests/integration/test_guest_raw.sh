#!/bin/bash
# A Linux guest (QEMU, TCG) on raw images: vda an --export of a raw file, vdb
# an ioband device (iobandctl create, so every request goes through its
# device group's scheduler). The guest writes extents with dd (O_DIRECT,
# fsync), drops its cache and reads them and the whole disk back; then the
# device's status counts the guest's I/O, and each file equals a copy of
# its first content that received the same writes.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guest.sh"
requires md5sum jq cmp
guest_requires
IOBANDCTL=${IOBANDCTL:-$IOBAND_SOURCE/build/bin/iobandctl}
[ -x "$IOBANDCTL" ] || fail "iobandctl not found at $IOBANDCTL"

size=$((32 * MiB))
head -c "$size" /dev/urandom >"$T/a.raw"
head -c "$size" /dev/urandom >"$T/b.raw"
guest_sample_plan "$size"
for name in a b; do
  cp "$T/$name.raw" "$T/want-$name.raw"
  guest_apply_plan "$T/plan" "$T/pattern" "$T/want-$name.raw"
done
guest_expect "$T/plan" "$T/expect" vda="$T/want-a.raw" vdb="$T/want-b.raw"
guest_plan_script >"$T/guest.sh"

start_server "a=$T/a.raw"
ctl() { run 30 "$IOBANDCTL" --control "$T/state/ioband.ctl" "$@"; }
echo "0 $((size / 512)) ioband $T/b.raw 1" | ctl create vm1 || fail "iobandctl create vm1"
ctl message vm1 0 weight 40 || fail "iobandctl message vm1 0 weight 40"
SOCKETS[vm1]=$T/nbd.sock

guest_file "$T/plan" "$T/pattern" "$T/expect"
guest_run "$T/guest.sh" a vm1
grep -F 'read back as expected' "$GUEST_CONSOLE" | tr -d '\r' >&2
assert_alive

# The guest's requests went through the device's scheduler: its default
# group counted at least the bytes the guest wrote and read back, and a FLUSH
# for each fsync (the guest sees a write cache).
ctl --json status vm1 >"$T/status.json" || fail "iobandctl status vm1"
written=$(awk '{ n += $2 } END { print n }' "$T/plan")
fsyncs=$(wc -l <"$T/plan")
jq -e --argjson w "$written" --argjson s "$size" --argjson f "$fsyncs" '
  .data.devices[] | select(.name == "vm1") | .groups[] | select(.id == -1) | .observation.ops |
  .write.bytes >= $w and .read.bytes >= $s and .flush.requests >= $f' "$T/status.json" >/dev/null || {
  jq '.data.devices[] | select(.name == "vm1") | .groups[] | {id, ops: .observation.ops}' "$T/status.json" >&2
  fail "vm1's status does not count the guest's $written bytes written, $size read and $fsyncs flushes"
}
stop_servers

cmp "$T/a.raw" "$T/want-a.raw" || fail "a.raw differs from the writes the guest made"
cmp "$T/b.raw" "$T/want-b.raw" || fail "b.raw (ioband device vm1) differs from the writes the guest made"
