#!/bin/bash
# fio --verify through a qcow2 overlay on a raw base image: two
# connections at iodepth 32 write their halves with crc32c checksums and
# read them back (4 KiB random writes, then mixed unaligned sizes over the
# same ranges, so clusters are first allocated with copy-on-write from the
# base, then rewritten in place); the image then passes qemu-img check,
# and the parts fio never touched still equal the base.
. "$(dirname "$0")/lib.sh"
requires fio qemu-img cmp

head -c $((80 * MiB)) /dev/urandom >"$T/base.raw"
qemu-img create -q -f qcow2 -b base.raw -F raw "$T/top.qcow2" $((80 * MiB)) || fail "qemu-img create"
start_server "top=$T/top.qcow2"
cd "$T"
for pass in "--rw=randwrite --bs=4k" "--rw=randwrite --bsrange=512-128k --bs_unaligned=1"; do
  log "fio $pass"
  # shellcheck disable=SC2086
  run 300 fio --name=qcow2 --ioengine=nbd --uri="$(uri top)" --numjobs=2 --size=32M --offset_increment=32M \
    --iodepth=32 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_dump=0 --verify_state_save=0 \
    $pass >"$T/fio.out" 2>&1 || { cat "$T/fio.out" >&2; fail "fio $pass failed"; }
  grep -Eiq 'verify.*(bad|fail)|crc32c.*(bad|fail)' "$T/fio.out" && fail "fio $pass: verify errors"
done
assert_alive
stop_servers
qemu-img check "$T/top.qcow2" >"$T/check.out" || { cat "$T/check.out" >&2; fail "qemu-img check found errors"; }
qemu-img convert -O raw "$T/top.qcow2" "$T/top.raw"
cmp -n $((16 * MiB)) -i $((64 * MiB)) "$T/base.raw" "$T/top.raw" || fail "the last 16 MiB, never written, differ from the base"
