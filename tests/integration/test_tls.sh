#!/bin/bash
# TLS (NBD_OPT_STARTTLS) with real clients over TCP: nbdinfo and nbdsh
# (libnbd, nbds:// URIs) and qemu-io/qemu-img (tls-creds-psk and
# tls-creds-x509 objects) read back what they wrote, with a pre-shared key
# (psktool) and with certificates (certtool: a CA, a server and a client
# certificate, made here). Refused, each losing its own connection only:
# bad credential files at start, a plain client under --tls require, a
# wrong key, an unknown PSK user, a client that trusts another CA, an
# expired server certificate, and under --tls-verify-peer a client without
# a certificate or with one another CA signed. --tls on serves both.
. "$(dirname "$0")/lib.sh"
. "$LIBDIR/tls_creds.sh"
requires nbdinfo nbdsh qemu-io qemu-img psktool certtool cmp fio
[ "$PEER" = iobandd ] || skip "the TLS options are iobandd's"

C=$T/creds
mkdir -p "$C"
make_psk "$C/keys.psk" alice
make_psk "$C/wrong.psk" alice # alice again, another key
make_psk "$C/bob.psk" bob
make_ca "$C/ca" "ioband test CA"
make_ca "$C/otherca" "another CA"
make_cert "$C/server" "$C/ca" server localhost
make_cert "$C/client" "$C/ca" client alice
make_cert "$C/wrongca" "$C/otherca" client alice # trusts the other CA only
make_cert "$C/stranger" "$C/otherca" client mallory
cp "$C/ca/ca-cert.pem" "$C/stranger/ca-cert.pem" # trusts our CA, signed by the other
make_cert "$C/expired" "$C/ca" server localhost \
  $'activation_date = "2020-01-01 00:00:00 UTC"\nexpiration_date = "2021-01-01 00:00:00 UTC"'
mkdir -p "$C/nocert" && cp "$C/ca/ca-cert.pem" "$C/nocert/"

# --- bad configurations stop the start, naming the file and the reason
bad_start() { # PATTERN ARGS...
  local pattern=$1 out rc=0
  shift
  out=$(run 20 "$IOBANDD" --state-dir "$T/bad" --socket "$T/bad.sock" --export "x=,backend=memory,size=1M" "$@" 2>&1) ||
    rc=$?
  [ "$rc" -ne 0 ] || fail "iobandd $* started"
  echo "$out" | grep -q -- "$pattern" || fail "iobandd $*: expected '$pattern' in: $out"
}
printf 'alice:00zz\n' >"$C/bad.psk"
mkdir -p "$C/mismatch" && cp "$C/server/server-cert.pem" "$C/mismatch/" && cp "$C/client/client-key.pem" "$C/mismatch/server-key.pem"
bad_start "needs credentials" --tls require
bad_start "$C/missing.psk: No such file" --tls require --tls-psk "$C/missing.psk"
bad_start "$C/bad.psk:1: the key of 'alice' is not hexadecimal" --tls on --tls-psk "$C/bad.psk"
bad_start "$C/ca/server-cert.pem: No such file" --tls on --tls-certificates "$C/ca"
bad_start "$C/mismatch/server-cert.pem with $C/mismatch/server-key.pem" --tls on --tls-certificates "$C/mismatch"
bad_start "TLS is off" --tls-psk "$C/keys.psk"
bad_start "needs --tls-certificates" --tls require --tls-psk "$C/keys.psk" --tls-verify-peer
bad_start "$C/mismatch/ca-cert.pem: No such file" --tls require --tls-certificates "$C/mismatch" --tls-verify-peer

size=$((16 * MiB))
random_file "$T/src.raw" $size
truncate -s $size "$T/disk.img"
port=$(free_port)
addr=127.0.0.1:$port
qemu_opts() { # CREDS-OBJECT: --image-opts for the export over TLS
  echo "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$port,export=disk,tls-creds=tls0"
}
psk_object() { echo "tls-creds-psk,id=tls0,endpoint=client,dir=$1,username=${2:-alice}"; }
x509_object() { echo "tls-creds-x509,id=tls0,endpoint=client,dir=$1"; }
psk_uri() { echo "nbds://${2:-alice}@$addr/disk?tls-psk-file=$1"; }
# nbdsh_x509 DIR SCRIPT: connect with the certificates in DIR, then SCRIPT.
nbdsh_x509() {
  nbdsh -c "
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_certificates('$1')
h.set_export_name('disk')
h.connect_tcp('127.0.0.1', '$port')
$2"
}

# --- --tls require, PSK and certificates
IOBANDD_ARGS=(--tls require --tls-psk "$C/keys.psk" --tls-certificates "$C/server")
# mem: replies at memory speed, which a fast client can outrun.
start_server --listen "$addr" "disk=$T/disk.img" "mem=,backend=memory,size=16M"

log "nbdinfo over TLS with a PSK"
[ "$(run 60 nbdinfo --size "$(psk_uri "$C/keys.psk")")" -eq $size ] || fail "nbdinfo over TLS (PSK) failed"

log "qemu-img convert in over TLS with certificates, nbdsh with a PSK reads it back"
run 120 qemu-img convert -n -f raw "$T/src.raw" --object "$(x509_object "$C/client")" \
  --target-image-opts "$(qemu_opts)" || fail "qemu-img convert into the export over TLS (X.509) failed"
cmp "$T/src.raw" "$T/disk.img" || fail "disk.img differs from what qemu-img wrote over TLS"
nbdsh -c "
h.set_uri_allow_local_file(True)
h.connect_uri('$(psk_uri "$C/keys.psk")')
import hashlib
got = bytearray()
for off in range(0, $size, 4 << 20):
    got += h.pread(4 << 20, off)
assert got == open('$T/src.raw', 'rb').read(), 'data read over TLS differs'
" || fail "nbdsh over TLS (PSK) did not read back what qemu-img wrote"

log "nbdsh writes over TLS with a PSK, qemu-img convert reads it over TLS with certificates"
nbdsh -c "
import os
h.set_uri_allow_local_file(True)
h.connect_uri('$(psk_uri "$C/keys.psk")')
assert h.get_structured_replies_negotiated()
data = os.urandom(3 * 1024 * 1024 + 12345)
h.pwrite(data, 1000001, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), 1000001) == data
h.zero(65536, 8192)
assert h.pread(8192, 65536) == bytes(8192)
h.flush()
" || fail "nbdsh write and read over TLS (PSK) failed"
run 120 qemu-img convert --object "$(x509_object "$C/client")" --image-opts "$(qemu_opts)" -O raw "$T/out.raw" ||
  fail "qemu-img convert out of the export over TLS (X.509) failed"
cmp "$T/disk.img" "$T/out.raw" || fail "what qemu-img read over TLS differs from disk.img"

log "qemu-io over TLS with a PSK"
out=$(run 60 qemu-io --object "$(psk_object "$C")" --image-opts "$(qemu_opts)" \
  -c 'write -P 0x5c 4096 200000' -c 'read -P 0x5c 4096 200000' 2>&1) || fail "qemu-io over TLS (PSK) failed: $out"
echo "$out" | grep -qi fail && fail "qemu-io over TLS (PSK): $out"

# Small replies over TLS are held and gathered into full records while the
# client keeps sending (nbd/session.h); a timeout sends them when it stops,
# which a client with 4 requests in flight needs at every turn.
for depth in 32 4; do
  log "fio writes and verifies 4 KiB blocks over TLS with certificates, $depth in flight"
  mkdir -p "$T/fiohome/.pki/libnbd"
  cp "$C/client/ca-cert.pem" "$C/client/client-cert.pem" "$C/client/client-key.pem" "$T/fiohome/.pki/libnbd/"
  HOME=$T/fiohome run 60 fio --name=tls-verify --ioengine=nbd --uri="nbds://127.0.0.1:$port/mem" --rw=randwrite \
    --bs=4k --size=8M --iodepth=$depth --verify=crc32c --do_verify=1 --verify_fatal=1 --output="$T/fio.out" ||
    fail "fio over TLS at depth $depth failed or stalled: $(tail -5 "$T/fio.out")"
done
log "a client that leaves with 32 reads unanswered is closed"
before=$(grep -c " closed" "$T/iobandd.log" || true)
nbdsh -c "
import os, socket
h.set_uri_allow_local_file(True)
h.connect_uri('$(psk_uri "$C/keys.psk")')
for i in range(32):
    h.aio_pread(nbd.Buffer(4096), i * 8192)
socket.socket(fileno=os.dup(h.aio_get_fd())).shutdown(socket.SHUT_RDWR)
" || fail "nbdsh could not leave with reads in flight"
for ((i = 0; i < 50; i++)); do
  [ "$(grep -c " closed" "$T/iobandd.log" || true)" -gt "$before" ] && break
  sleep 0.1
done
[ "$(grep -c " closed" "$T/iobandd.log" || true)" -gt "$before" ] ||
  fail "the connection that left with replies in flight was not closed"
assert_alive

log "nbdsh over TLS with certificates"
nbdsh_x509 "$C/client" "assert h.pread(200000, 4096) == b'\\x5c' * 200000" ||
  fail "nbdsh over TLS (X.509) did not read what qemu-io wrote"

log "refused: a plain client, a wrong key, an unknown user, a client trusting another CA"
if run 30 nbdinfo --size "nbd://$addr/disk" >/dev/null 2>&1; then fail "a plain client was served under --tls require"; fi
if run 30 nbdinfo --size "$(psk_uri "$C/wrong.psk")" >/dev/null 2>&1; then fail "a wrong PSK was accepted"; fi
if run 30 nbdinfo --size "$(psk_uri "$C/bob.psk" bob)" >/dev/null 2>&1; then fail "an unknown PSK user was accepted"; fi
if nbdsh_x509 "$C/wrongca" "" >/dev/null 2>&1; then fail "a client that trusts another CA accepted the server"; fi
if run 30 qemu-io --object "$(psk_object "$C" bob)" --image-opts "$(qemu_opts)" -c 'read 0 512' >/dev/null 2>&1; then
  fail "qemu-io with an unknown PSK user was served"
fi
grep -q "unknown PSK username 'bob'" "$T/iobandd.log" || fail "the log does not say why bob was refused"
grep -q "EXPORT_NAME without TLS\|TLS handshake failed" "$T/iobandd.log" || fail "no handshake failure logged"
[ "$(run 60 nbdinfo --size "$(psk_uri "$C/keys.psk")")" -eq $size ] || fail "TLS failed after the refusals"
assert_alive
stop_servers

# --- an expired server certificate: the server warns, clients refuse it
IOBANDD_ARGS=(--tls require --tls-certificates "$C/expired")
start_server --listen "$addr" "disk=$T/disk.img"
grep -q "server-cert.pem expired on 2021-01-01" "$T/iobandd.log" || fail "no warning about the expired certificate"
if nbdsh_x509 "$C/client" "" >/dev/null 2>&1; then fail "nbdsh accepted an expired server certificate"; fi
if run 30 qemu-img info --object "$(x509_object "$C/client")" --image-opts "$(qemu_opts)" >/dev/null 2>&1; then
  fail "qemu-img accepted an expired server certificate"
fi
assert_alive
stop_servers

# --- --tls-verify-peer: a client certificate signed by ca-cert.pem is required
IOBANDD_ARGS=(--tls require --tls-certificates "$C/server" --tls-verify-peer)
start_server --listen "$addr" "disk=$T/disk.img"
nbdsh_x509 "$C/client" "assert h.pread(200000, 4096) == b'\\x5c' * 200000" ||
  fail "a client with a certificate was refused under --tls-verify-peer"
grep -q "identity 'CN=alice,O=ioband tests'" "$T/iobandd.log" || fail "the client certificate's DN is not logged"
out=$(run 60 qemu-img info --object "$(x509_object "$C/client")" --image-opts "$(qemu_opts)" 2>&1) ||
  fail "qemu-img with a client certificate was refused: $out"
if nbdsh_x509 "$C/nocert" "" >/dev/null 2>&1; then fail "a client without a certificate was served"; fi
grep -q "the client sent no certificate" "$T/iobandd.log" || fail "the log does not say the client had no certificate"
# (GnuTLS clients do not even send a certificate the server's CA list does
# not name: the server sees none.)
failures=$(grep -c "TLS handshake failed" "$T/iobandd.log")
if nbdsh_x509 "$C/stranger" "" >/dev/null 2>&1; then fail "a client certificate from another CA was accepted"; fi
[ "$(grep -c "TLS handshake failed" "$T/iobandd.log")" -gt "$failures" ] ||
  fail "the refusal of the stranger's certificate is not logged"
assert_alive
stop_servers

# --- --tls on: TLS at the client's choice
IOBANDD_ARGS=(--tls on --tls-psk "$C/keys.psk")
start_server --listen "$addr" "disk=$T/disk.img"
nbdsh -u "nbd://$addr/disk" -c "assert h.pread(200000, 4096) == b'\\x5c' * 200000" ||
  fail "a plain client was refused under --tls on"
nbdsh -c "
h.set_uri_allow_local_file(True)
h.connect_uri('$(psk_uri "$C/keys.psk")')
assert h.get_tls_negotiated()
assert h.pread(200000, 4096) == b'\\x5c' * 200000
" || fail "a TLS client was refused under --tls on"
assert_alive
log "ok"
