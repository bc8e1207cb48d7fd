# Shared helpers for ioband's integration tests written in bash.
# Source it first thing:   . "$(dirname "$0")/lib.sh"
#
# It makes a private temporary directory $T, and on exit stops every server
# it started and removes $T (IOBAND_TEST_KEEP=1 keeps it for a post-mortem).
# Servers also die with the test (setpriv --pdeathsig), so a test killed by
# its time limit leaves nothing behind.
#
#   start_server [--listen HOST:PORT] SPEC...   iobandd --export SPEC...
#                                               (plus "${IOBANDD_ARGS[@]}")
#   uri NAME / sock NAME / tcp_uri NAME         where to reach an export
#   run TIMEOUT CMD...                          a client, bounded in time
#   nbdsh ARGS...                               nbdsh with the right python3
#   fail MSG / skip MSG / requires TOOL...
#
# The server is iobandd ($IOBANDD); IOBAND_TEST_PEER=nbdkit runs the same
# export specs on nbdkit instead (one nbdkit per export) to validate a test.

set -euo pipefail

LIBDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IOBAND_SOURCE=${IOBAND_SOURCE:-$(cd "$LIBDIR/../.." && pwd)}
IOBANDD=${IOBANDD:-$IOBAND_SOURCE/build/bin/iobandd}
PEER=${IOBAND_TEST_PEER:-iobandd}
PY=/usr/bin/python3
TEST_NAME=$(basename "$0" .sh)
# Generous: the suite runs on slow, noisy 2-core machines.
TIMEOUT=${IOBAND_TEST_TIMEOUT:-60}

# shellcheck disable=SC2034 # used by the tests that source this file
MiB=$((1024 * 1024))

T=$(mktemp -d "${TMPDIR:-/tmp}/ioband-test.$TEST_NAME.XXXXXX")
SERVER_PIDS=()
SERVER_LOGS=()
IOBANDD_ARGS=() # more iobandd options (not given to the nbdkit peer)
declare -A SOCKETS=()
LISTEN=

log() { echo "# $*" >&2; }

print_logs() {
  local f
  for f in "${SERVER_LOGS[@]}"; do
    [ -f "$f" ] || continue
    echo "--- $f (last 60 lines)" >&2
    tail -n 60 "$f" >&2
  done
}

fail() {
  echo "FAIL: $TEST_NAME: $*" >&2
  print_logs
  exit 1
}

skip() {
  echo "SKIP: $TEST_NAME: $*" >&2
  exit 77
}

requires() {
  local tool
  for tool; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
  done
}

stop_servers() {
  local pid i
  for pid in "${SERVER_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${SERVER_PIDS[@]}"; do
    for ((i = 0; i < TIMEOUT * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "server $pid ignored SIGTERM for ${TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
}

_cleanup() {
  local rc=$?
  trap - EXIT
  stop_servers
  if [ -n "${IOBAND_TEST_KEEP:-}" ] && [ "$IOBAND_TEST_KEEP" != 0 ]; then
    log "kept $T"
  else
    rm -rf "$T"
  fi
  exit $rc
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wait until the server $1 accepts NBD connections at $2 (a socket path or
# HOST:PORT).
_wait_ready() {
  "$PY" "$LIBDIR/iobandtest.py" wait-ready "$1" "$2" "$TIMEOUT" ||
    fail "$PEER did not start (see its log)"
}

# start_server [--listen HOST:PORT] SPEC...
start_server() {
  if [ "${1:-}" = --listen ]; then
    LISTEN=$2
    shift 2
  fi
  case $PEER in
    iobandd) _start_iobandd "$@" ;;
    nbdkit) _start_nbdkit "$@" ;;
    *) fail "unknown IOBAND_TEST_PEER '$PEER'" ;;
  esac
}

_start_iobandd() {
  [ -x "$IOBANDD" ] || fail "iobandd not found at $IOBANDD (build it with 'make build')"
  local args=(--state-dir "$T/state" --socket "$T/nbd.sock") spec name
  [ -n "$LISTEN" ] && args+=(--listen "$LISTEN")
  for spec; do
    args+=(--export "$spec")
    name=${spec%%=*}
    SOCKETS[$name]=$T/nbd.sock
  done
  args+=("${IOBANDD_ARGS[@]}")
  mkdir -p "$T/state"
  local logf=$T/iobandd.log
  log "starting: $IOBANDD ${args[*]}"
  setpriv --pdeathsig KILL -- "$IOBANDD" "${args[@]}" </dev/null >>"$logf" 2>&1 &
  SERVER_PIDS+=($!)
  SERVER_LOGS+=("$logf")
  _wait_ready $! "$T/nbd.sock"
  [ -n "$LISTEN" ] && _wait_ready "${SERVER_PIDS[-1]}" "$LISTEN"
  return 0
}

NBDKIT_COUNT=0
_start_nbdkit() {
  local spec i sock argv
  for spec; do
    i=$((NBDKIT_COUNT++))
    sock=$T/nbdkit$i.sock
    mapfile -d '' argv < <("$PY" "$LIBDIR/iobandtest.py" nbdkit-argv "$spec" "$sock")
    SOCKETS[${argv[0]}]=$sock
    _spawn_nbdkit "$T/nbdkit$i.log" "$sock" "${argv[@]:1}"
  done
  # nbdkit listens on either a Unix socket or TCP: one more for TCP (the
  # same backing file; a RAM disk is not shared between the two).
  if [ -n "$LISTEN" ]; then
    mapfile -d '' argv < <("$PY" "$LIBDIR/iobandtest.py" nbdkit-argv "$1" "" "$LISTEN")
    i=$((NBDKIT_COUNT++))
    _spawn_nbdkit "$T/nbdkit$i.log" "$LISTEN" "${argv[@]:1}"
  fi
  return 0
}

_spawn_nbdkit() { # LOG ADDRESS ARGV...
  local logf=$1 address=$2
  shift 2
  log "starting: $*"
  setpriv --pdeathsig KILL -- "$@" </dev/null >>"$logf" 2>&1 &
  SERVER_PIDS+=($!)
  SERVER_LOGS+=("$logf")
  _wait_ready $! "$address"
}

# Every server still running?
assert_alive() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || fail "$PEER (pid $pid) died"
  done
}

sock() {
  [ -n "${SOCKETS[$1]:-}" ] || fail "no export '$1' was started"
  echo "${SOCKETS[$1]}"
}
uri() { echo "nbd+unix:///$1?socket=$(sock "$1")"; }
tcp_uri() { echo "nbd://$LISTEN/$1"; }

# run TIMEOUT CMD...: a client command that must not hang the test.
run() {
  local limit=$1
  shift
  timeout --kill-after=10 "$limit" "$@"
}

# nbdsh runs `python3` from PATH, which must be the one with libnbd's module.
nbdsh() { PATH=/usr/bin:$PATH timeout --kill-after=10 120 nbdsh "$@"; }

random_file() { # PATH SIZE
  head -c "$2" /dev/urandom >"$1"
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
