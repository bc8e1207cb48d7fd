#!/bin/bash
# qcow2 images made by qemu-img, read through iobandd and through qemu-io /
# qemu-img (the oracle): every cluster size from 512 B to 2 MiB, compressed
# clusters, zero clusters, a 3-deep chain mixing raw and qcow2 with relative
# and absolute backing names, v2 (compat=0.10) images; the export size is the
# virtual size, base:allocation follows the L2 tables; detection and
# format=; hostile images refused at start with the reason.
. "$(dirname "$0")/lib.sh"
requires qemu-img qemu-io nbdcopy nbdinfo cmp

# fill IMAGE: data at a few offsets, some of it zeroed as zero clusters.
fill() {
  qemu-io -f qcow2 -c "write -P 0x5a 0 300k" -c "write -P 0xa5 1M 64k" -c "write -P 0x17 3000k 7k" \
    -c "write -z 1M 32k" -c "write -P 0x33 7M 1M" "$1" >/dev/null || fail "qemu-io cannot fill $1"
}

# same_data EXPORT IMAGE: what iobandd serves equals qemu-img's reading.
same_data() {
  run 120 nbdcopy "$(uri "$1")" "$T/$1.out" || fail "nbdcopy of $1 failed"
  qemu-img convert -O raw "$2" "$T/$1.want" || fail "qemu-img convert $2 failed"
  cmp "$T/$1.want" "$T/$1.out" || fail "$1 reads differently through iobandd than through qemu-img"
  local size
  size=$(run 30 nbdinfo --size "$(uri "$1")") || fail "nbdinfo --size $1 failed"
  [ "$size" = "$(stat -c %s "$T/$1.want")" ] || fail "$1: export size $size is not the virtual size"
}

specs=()
names=()
for bits in 9 10 12 16 17 21; do
  cs=$((1 << bits))
  qemu-img create -q -f qcow2 -o cluster_size=$cs "$T/c$bits.qcow2" 9M || fail "qemu-img create"
  fill "$T/c$bits.qcow2"
  specs+=("c$bits=$T/c$bits.qcow2,readonly")
  names+=("c$bits")
done

# compressed: every cluster deflated by qemu-img convert -c; some cluster sizes
for bits in 9 16 21; do
  qemu-img convert -q -c -O qcow2 -o cluster_size=$((1 << bits)) "$T/c16.qcow2" "$T/z$bits.qcow2" || fail "convert -c"
  specs+=("z$bits=$T/z$bits.qcow2,readonly")
  names+=("z$bits")
done

# v2 image
qemu-img create -q -f qcow2 -o compat=0.10 "$T/v2.qcow2" 9M
qemu-io -f qcow2 -c "write -P 0x42 100k 200k" "$T/v2.qcow2" >/dev/null
specs+=("v2=$T/v2.qcow2,readonly")
names+=(v2)

# 3-deep chain: raw base (absolute name) <- qcow2 mid <- qcow2 top (relative
# name, 4 KiB clusters, larger than its backing)
mkdir -p "$T/chain/sub"
head -c $((8 * MiB)) /dev/urandom >"$T/chain/base.raw"
qemu-img create -q -f qcow2 -b "$T/chain/base.raw" -F raw "$T/chain/sub/mid.qcow2" 10M
qemu-io -f qcow2 -c "write -P 0x61 1M 100k" -c "write -z 2M 64k" -c "write -P 0x62 9M 64k" "$T/chain/sub/mid.qcow2" >/dev/null
(cd "$T/chain" && qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 -o cluster_size=4096 top.qcow2 12M)
qemu-io -f qcow2 -c "write -P 0x63 1050k 4k" -c "write -P 0x64 11M 8k" -c "write -z 4M 8k" "$T/chain/top.qcow2" >/dev/null
specs+=("top=$T/chain/top.qcow2,readonly" "top2=$T/chain/top.qcow2,readonly")
names+=(top top2)

# format=raw serves a qcow2 file as the bytes it holds
specs+=("asraw=$T/c16.qcow2,format=raw,readonly")

start_server "${specs[@]}"
for n in "${names[@]}"; do
  f=$(grep -o "$n=[^,]*" <<<"${specs[*]}" | head -1)
  same_data "$n" "${f#*=}"
done
run 60 nbdcopy "$(uri asraw)" "$T/asraw.out" && cmp "$T/asraw.out" "$T/c16.qcow2" ||
  fail "format=raw did not serve the qcow2 file's own bytes"

# Both exports of the chain share its backing files: one open each.
pid=${SERVER_PIDS[0]}
opens=$(ls -l "/proc/$pid/fd" | grep -c "base.raw")
[ "$opens" -le 2 ] || fail "base.raw is open $opens times for two exports (shared: one raw backend, two descriptors)"

# base:allocation against qemu-img map: zero/hole/data where qemu says
map() { # EXPORT: "start length flags" lines, flags as nbdinfo prints them
  run 30 nbdinfo --map "$(uri "$1")" | awk '{print $1, $2, $3}'
}
map top >"$T/top.map"
# the zero clusters of top (4M, 8k) and of mid (2M, 64k) read as zeroes
grep -q "^4194304 8192 3$" "$T/top.map" || { cat "$T/top.map" >&2; fail "top's zero clusters at 4M are not hole,zero"; }
grep -q "^2097152 65536 3$" "$T/top.map" || { cat "$T/top.map" >&2; fail "mid's zero cluster at 2M is not hole,zero"; }
# past the raw base (8M) and unallocated above: a hole
awk '$1 <= 9437184 + 65536 && $1 + $2 >= 11534336 && $3 == 3' "$T/top.map" | grep -q . ||
  { cat "$T/top.map" >&2; fail "10M..11M (past the base, unallocated above) is not a hole"; }
map c16 >"$T/c16.map"
head -1 "$T/c16.map" | grep -q "^0 307200 0$\|^0 327680 0$" || { cat "$T/c16.map" >&2; fail "c16 starts with data"; }
assert_alive
stop_servers

# Hostile and unsupported images: the start stops and says why.
refused() { # WHAT IMAGE PATTERN [SPEC-SUFFIX]
  if "$IOBANDD" --state-dir "$T/state2" --socket "$T/h.sock" --control "$T/h.ctl" \
    --export "h=$2,readonly${4:-}" >"$T/h.log" 2>&1 </dev/null & then
    local p=$!
    sleep 0.1
    for _ in $(seq 100); do kill -0 $p 2>/dev/null || break; sleep 0.1; done
    if kill -0 $p 2>/dev/null; then
      kill $p
      fail "$1: iobandd started on it"
    fi
  fi
  grep -q "$3" "$T/h.log" || { cat "$T/h.log" >&2; fail "$1: the refusal does not say '$3'"; }
  log "refused $1: $(grep -o "$3.*" "$T/h.log" | head -1)"
}
mkdir -p "$T/state2"
head -c 50 "$T/c16.qcow2" >"$T/trunc.qcow2"
refused "truncated header" "$T/trunc.qcow2" "truncated header"
cp "$T/c16.qcow2" "$T/l1.qcow2"
printf '\x00\x00\x00\x00\x7f\x00\x00\x00' | dd of="$T/l1.qcow2" bs=1 seek=40 conv=notrunc status=none
refused "L1 beyond the file" "$T/l1.qcow2" "L1 table at .* beyond the end of the file"
cp "$T/c16.qcow2" "$T/rt.qcow2"
l1=$(od -An -tx1 -j40 -N8 "$T/rt.qcow2" | tr -d ' \n')
printf "$(sed 's/../\\x&/g' <<<"$l1")" | dd of="$T/rt.qcow2" bs=1 seek=48 conv=notrunc status=none
refused "refcount table overlapping L1" "$T/rt.qcow2" "refcount table overlaps the L1 table"
qemu-img create -q -f qcow2 -o encrypt.format=aes,encrypt.key-secret=s0 --object secret,id=s0,data=x "$T/enc.qcow2" 1M 2>/dev/null &&
  refused "encryption" "$T/enc.qcow2" "encrypt"
qemu-img create -q -f qcow2 -o extended_l2=on "$T/l2x.qcow2" 1M
refused "extended L2" "$T/l2x.qcow2" "extended L2 entries"
qemu-img create -q -f qcow2 -o refcount_bits=64 "$T/rc64.qcow2" 1M
refused "refcount_bits 64" "$T/rc64.qcow2" "refcount width of 64 bits is not supported"
qemu-img create -q -f qcow2 -o data_file="$T/ext.raw" "$T/ext.qcow2" 1M
refused "external data file" "$T/ext.qcow2" "external data file"
cp "$T/c16.qcow2" "$T/dirty.qcow2"
printf '\x01' | dd of="$T/dirty.qcow2" bs=1 seek=79 conv=notrunc status=none
refused "dirty bit" "$T/dirty.qcow2" "the image is dirty"
cp "$T/c16.qcow2" "$T/unknown.qcow2"
printf '\x80' | dd of="$T/unknown.qcow2" bs=1 seek=78 conv=notrunc status=none
refused "unknown incompatible bit" "$T/unknown.qcow2" "unknown incompatible feature bit 15"
# a loop: a <- b <- a
qemu-img create -q -f qcow2 "$T/loopa.qcow2" 1M
qemu-img create -q -f qcow2 -b loopa.qcow2 -F qcow2 "$T/loopb.qcow2" 1M
qemu-img rebase -u -f qcow2 -b loopb.qcow2 -F qcow2 "$T/loopa.qcow2"
refused "backing loop" "$T/loopb.qcow2" "backing chain loop"
# a backing name of 64 KiB (the field says so; the name would run past the header cluster)
cp "$T/c16.qcow2" "$T/longname.qcow2"
printf '\x00\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x00' | dd of="$T/longname.qcow2" bs=1 seek=8 conv=notrunc status=none
refused "64 KiB backing name" "$T/longname.qcow2" "backing file name of 65536 bytes"
refused "format=qcow2 on a raw file" "$T/chain/base.raw" "not a qcow2 image" ",format=qcow2"

