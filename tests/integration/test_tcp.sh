#!/bin/bash
# TCP: iobandd with --listen 127.0.0.1:PORT serves nbd://127.0.0.1:PORT/NAME
# (nbdinfo, qemu-io, nbdcopy), and the same data over its Unix socket; the
# backing file holds what was written over TCP.
. "$(dirname "$0")/lib.sh"
requires nbdinfo nbdcopy nbdsh qemu-io cmp jq

size=$((16 * MiB))
random_file "$T/src.raw" $size

# (A free port could be taken between asking and binding; unlikely enough.)
port=$(free_port)
truncate -s $size "$T/disk.img"
start_server --listen "127.0.0.1:$port" "disk=$T/disk.img"

u=$(tcp_uri disk)
log "nbdinfo $u"
run 60 nbdinfo --json "$u" >"$T/info.json" || fail "nbdinfo over TCP failed"
[ "$(jq '.exports[0]."export-size"' "$T/info.json")" -eq $size ] ||
  fail "size over TCP is not $size: $(cat "$T/info.json")"
[ "$(jq -r '.exports[0]."export-name"' "$T/info.json")" = disk ] ||
  fail "export name over TCP is not disk: $(cat "$T/info.json")"

log "qemu-io over TCP"
out=$(run 60 qemu-io -f raw -c 'write -P 0x3a 1000 3000' -c 'read -P 0x3a 1000 3000' \
  -c 'read -P 0 0 1000' -c 'read -P 0 4000 4096' "$u" 2>&1) || fail "qemu-io over TCP failed: $out"
echo "$out" | grep -qi 'fail' && fail "qemu-io over TCP: $out"

log "nbdsh over TCP"
nbdsh -u "$u" -c "
import os
assert h.get_size() == $size
assert h.can_multi_conn() and h.can_flush() and h.can_fua()
data = os.urandom(70000)
h.pwrite(data, 5 * 1024 * 1024 + 1, nbd.CMD_FLAG_FUA)
assert h.pread(70000, 5 * 1024 * 1024 + 1) == data
h.zero(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.flush()
" || fail "nbdsh over TCP failed"

log "nbdcopy in over TCP, out over the Unix socket"
run 120 nbdcopy --connections=2 "$T/src.raw" "$u" || fail "nbdcopy into disk over TCP failed"
run 120 nbdcopy "$(uri disk)" "$T/out.raw" || fail "nbdcopy out of disk over the Unix socket failed"
cmp "$T/src.raw" "$T/out.raw" || fail "data written over TCP reads back different over the Unix socket"
cmp "$T/src.raw" "$T/disk.img" || fail "disk.img differs from what was written over TCP"

# A wrong export name over TCP fails cleanly; the daemon keeps serving.
if run 60 nbdinfo "nbd://127.0.0.1:$port/nosuch" >/dev/null 2>&1; then
  fail "nbdinfo of an unknown export over TCP succeeded"
fi
run 60 nbdinfo --size "$u" >/dev/null || fail "nbdinfo over TCP failed after an unknown export"

assert_alive
log "ok"
