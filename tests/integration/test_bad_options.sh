#!/bin/bash
# iobandd's command line: an unknown option or a malformed --export stops
# the start with exit status 2 and a message naming the option; a backing
# file that does not exist stops it with a non-zero status naming the file.
# It never starts serving in these cases. The good form of the same command
# line does start.
. "$(dirname "$0")/lib.sh"
[ "$PEER" = iobandd ] || skip "iobandd's command line only (IOBAND_TEST_PEER=$PEER)"
[ -x "$IOBANDD" ] || fail "iobandd not found at $IOBANDD (build it with 'make build')"

truncate -s $((16 * MiB)) "$T/disk.img"
mkdir -p "$T/state"
base=(--state-dir "$T/state" --socket "$T/nbd.sock")
failures=0

# bad STATUS WORD ARG...: iobandd ARG... must exit with STATUS ("nonzero"
# for any failure) within 30 s, and its stderr must mention WORD.
bad() {
  local want=$1 word=$2
  shift 2
  local rc
  set +e
  run 30 "$IOBANDD" "${base[@]}" "$@" </dev/null >"$T/out" 2>"$T/err"
  rc=$?
  set -e
  local what="iobandd $*"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "FAIL: $what: still running after 30 s (it should refuse to start)" >&2
    failures=$((failures + 1))
  elif [ $rc -eq 0 ] || { [ "$want" != nonzero ] && [ $rc -ne "$want" ]; }; then
    echo "FAIL: $what: exit status $rc, expected $want; stderr: $(head -c 500 "$T/err")" >&2
    failures=$((failures + 1))
  elif ! grep -qiF -- "$word" "$T/err"; then
    echo "FAIL: $what: exit $rc but stderr does not mention '$word': $(head -c 500 "$T/err")" >&2
    failures=$((failures + 1))
  else
    log "ok: $what -> $rc: $(head -n 1 "$T/err")"
  fi
  rm -f "$T/nbd.sock"
}

bad 2 --bogus --bogus
bad 2 --bogus --bogus=1 --export "d=$T/disk.img"
bad 2 --export --export
bad 2 --export --export noequals
bad 2 --export --export "d=$T/disk.img,size=12Q"
bad 2 --export --export "d=$T/disk.img,size=-1"
bad 2 --export --export "d=$T/disk.img,nosuchkey=1"
bad 2 --export --export "d=$T/disk.img,backend=floppy"
bad 2 --export --export "d=,backend=memory"
bad 2 --export --export "d=$T/disk.img,fault-errno=ENOTANERRNO"
bad 2 --export --export "d=$T/disk.img,fault-errno=EIO,fault-rate=lots"
bad 2 --export --export "d=$T/disk.img,fault-delay-ms=soon"
bad 2 --threads --threads zero
bad 2 --poll-max-us --poll-max-us -5
bad 2 --poll-max-us --poll-max-us 20000
bad 2 --poll-max-us --poll-max-us soon
bad 2 --listen --listen no-port-here
bad 2 --listen --listen 127.0.0.1:99999
bad 2 --export --export "d=$T/disk.img" --export "d=,backend=memory,size=1M"
bad nonzero nosuch.img --export "d=$T/nosuch.img"

# The good form of the same command line starts and serves.
IOBANDD_ARGS=(--poll-max-us 0)  # and polling off: it serves all the same
start_server "d=$T/disk.img,size=8M" "m=,backend=memory,size=1M,description=scratch"
"$PY" "$LIBDIR/iobandtest.py" wait-ready "${SERVER_PIDS[0]}" "$T/nbd.sock" 5 ||
  fail "iobandd with good options does not serve"

[ $failures -eq 0 ] || fail "$failures bad command lines were not refused properly"
log "ok"
