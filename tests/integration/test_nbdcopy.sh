#!/bin/bash
# nbdcopy against iobandd: 64 MiB of random data from a file into an export
# and back out into a file (cmp), with many connections and requests in
# flight; export to export on the same daemon; and a sparse source with
# holes copied over old data (the holes must read back as zeroes).
. "$(dirname "$0")/lib.sh"
requires nbdcopy cmp

size=$((64 * MiB))
random_file "$T/src.raw" $size
truncate -s $size "$T/disk.img"
start_server "disk=$T/disk.img" "ram=,backend=memory,size=64M"

log "nbdcopy src.raw -> disk (4 connections, 64 requests each)"
run 180 nbdcopy --connections=4 --requests=64 "$T/src.raw" "$(uri disk)" || fail "nbdcopy into disk failed"
log "nbdcopy disk -> out.raw"
run 180 nbdcopy --connections=4 --requests=64 "$(uri disk)" "$T/out.raw" || fail "nbdcopy out of disk failed"
cmp "$T/src.raw" "$T/out.raw" || fail "data copied out of disk differs from what was copied in"
cmp "$T/src.raw" "$T/disk.img" || fail "disk.img differs from what nbdcopy wrote"

log "nbdcopy disk -> ram (export to export), then ram -> ram.raw"
run 180 nbdcopy "$(uri disk)" "$(uri ram)" || fail "nbdcopy disk -> ram failed"
run 180 nbdcopy --connections=1 --requests=1 "$(uri ram)" "$T/ram.raw" || fail "nbdcopy out of ram failed"
cmp "$T/src.raw" "$T/ram.raw" || fail "ram differs from disk after nbdcopy"

# A sparse source: data at 0-1M and 40M-41M, holes elsewhere; copied onto
# the random data already in ram, the holes must become zeroes.
truncate -s $size "$T/sparse.raw"
dd if="$T/src.raw" of="$T/sparse.raw" bs=1M count=1 conv=notrunc status=none
dd if="$T/src.raw" of="$T/sparse.raw" bs=1M skip=40 seek=40 count=1 conv=notrunc status=none
log "nbdcopy sparse.raw -> ram"
run 180 nbdcopy "$T/sparse.raw" "$(uri ram)" || fail "nbdcopy of a sparse file into ram failed"
run 180 nbdcopy "$(uri ram)" "$T/sparse.out" || fail "nbdcopy out of ram failed"
cmp "$T/sparse.raw" "$T/sparse.out" || fail "the holes of sparse.raw do not read back as zeroes from ram"

# And the same over the raw file export.
run 180 nbdcopy "$T/sparse.raw" "$(uri disk)" || fail "nbdcopy of a sparse file into disk failed"
cmp "$T/sparse.raw" "$T/disk.img" || fail "disk.img differs from sparse.raw after nbdcopy"

assert_alive
log "ok"
