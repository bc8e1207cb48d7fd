#!/bin/bash
# fio --ioengine=nbd against iobandd: two jobs (two connections), iodepth 32,
# each writing its own half of an export and verifying it with crc32c
# checksums read back; on a RAM disk and on a raw file, with 4 KiB blocks,
# with mixed unaligned block sizes, and with 1 MiB sequential writes; then
# on a daemon with two reactor threads, both exports at once.
. "$(dirname "$0")/lib.sh"
requires fio jq

truncate -s $((64 * MiB)) "$T/disk.img"
start_server "disk=$T/disk.img" "ram=,backend=memory,size=64M"

# fio_verify NAME LABEL FIO-OPTIONS...
fio_verify() {
  local name=$1 label=$2
  shift 2
  local out=$T/fio-$label.json
  log "fio $label on $name: $*"
  set +e
  run 180 fio --name="$label" --ioengine=nbd --uri="$(uri "$name")" \
    --numjobs=2 --size=32M --offset_increment=32M --iodepth=32 \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_dump=0 --verify_state_save=0 \
    --output-format=json --output="$out" "$@" >"$T/fio-$label.stdout" 2>&1
  local rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    cat "$T/fio-$label.stdout" "$out" >&2 2>/dev/null || true
    fail "fio $label on $name exited $rc"
  fi
  grep -i 'verify' "$T/fio-$label.stdout" | grep -Eiq 'bad|fail|error' &&
    fail "fio $label on $name reported verify errors: $(cat "$T/fio-$label.stdout")"
  local jobs errors unread
  jobs=$(jq '.jobs | length' "$out")
  [ "$jobs" -eq 2 ] || fail "fio $label: $jobs jobs reported, expected 2"
  errors=$(jq '[.jobs[].error] | add' "$out")
  [ "$errors" -eq 0 ] || fail "fio $label on $name: job errors $(jq -c '[.jobs[].error]' "$out")"
  # Each job wrote (about: unaligned sizes do not fill it exactly) 32 MiB
  # and read back all it wrote to verify it.
  unread=$(jq '[.jobs[] | select(.write.io_bytes < 31 * 1048576 or .read.io_bytes < .write.io_bytes)] | length' "$out")
  [ "$unread" -eq 0 ] ||
    fail "fio $label on $name did not write and verify ~32 MiB per job: $(jq -c '[.jobs[] | {w: .write.io_bytes, r: .read.io_bytes}]' "$out")"
}

cd "$T" # fio writes state files into the current directory
fio_verify ram randwrite-4k --rw=randwrite --bs=4k
fio_verify disk randwrite-4k --rw=randwrite --bs=4k
fio_verify ram randwrite-mixed --rw=randwrite --bsrange=512-128k --bs_unaligned=1
fio_verify disk write-1m --rw=write --bs=1M
assert_alive

stop_servers
IOBANDD_ARGS=(--threads 2)
start_server "disk=$T/disk.img" "ram=,backend=memory,size=64M"
fio_verify ram threads-ram --rw=randwrite --bs=4k &
ram_pid=$!
fio_verify disk threads-disk --rw=randwrite --bs=4k &
disk_pid=$!
wait $ram_pid || fail "fio on ram with --threads 2 failed"
wait $disk_pid || fail "fio on disk with --threads 2 failed"

assert_alive
log "ok"
