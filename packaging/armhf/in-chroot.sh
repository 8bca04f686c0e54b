#!/usr/bin/env bash
# Runs inside a chroot: check.sh calls it after installing the agent in /opt/florete-agent,
# packaging/test-packaging.sh after installing the .deb.
#   in-chroot.sh run       the agent's main job: start, status, apply examples/, both pods Running,
#                          logs, delete, stop with SIGTERM; with CHECK_INSTALLED set (the path of
#                          packaging/check_installed.py), that check too, while the pods run
#   in-chroot.sh measure   Python heap of the daemon (tracemalloc) and import time of agent.daemon;
#                          prints "FIGURE ..." lines that check.sh puts in its summary
# Nothing is sent on a real network interface: FLORETE_INTERFACES=lo, probes go to 127.0.0.1.
set -euo pipefail

MODE=${1:?usage: in-chroot.sh run|measure}
# Where florete-agent and the examples are: check.sh's venv (the defaults), or the .deb's
# (packaging/test-packaging.sh: /usr/bin, /usr/share/doc/florete-agent/examples).
BIN_DIR=${CHECK_BIN_DIR:-/opt/florete-agent/bin}
EXAMPLES=${CHECK_EXAMPLES:-/src/examples}
TIMEOUT=${ARMHF_CHECK_TIMEOUT:-300}      # seconds for each wait (everything is ~8x slower here)
AGENT_LOG=/tmp/fl-agent.log
HEAP_FILE=/tmp/fl-heap
export PATH=$BIN_DIR:$PATH FLORETE_INTERFACES=lo FLORETE_STATE_DIR=/tmp/fl
# Not /src: "python3 -c" would import the source tree instead of the installed package.
cd /tmp

AGENT_PID=""

show() {
  echo "\$ $*"
  "$@"
}

# wait_until WHAT COMMAND...: run COMMAND once a second until it succeeds, the agent dies or
# TIMEOUT passes.
wait_until() {
  local what=$1 start=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$AGENT_PID" 2>/dev/null; then
      echo "the agent exited while waiting for $what; its log:" >&2
      cat "$AGENT_LOG" >&2
      return 1
    fi
    if ((SECONDS - start >= TIMEOUT)); then
      echo "timed out after ${TIMEOUT}s waiting for $what" >&2
      return 1
    fi
    sleep 1
  done
  echo "($what after $((SECONDS - start))s)"
}

# Both example pods Running, and web READY 1/1 (its readinessProbe passed).
pods_running() {
  florete-agent get pods | awk '
    $1 == "hello" && $3 == "Running" { hello = 1 }
    $1 == "web" && $2 == "1/1" && $3 == "Running" { web = 1 }
    END { exit !(hello && web) }'
}

start_agent() {  # start_agent COMMAND...: the daemon in the background, its log in AGENT_LOG
  rm -rf "$FLORETE_STATE_DIR"
  # qemu-user does not emulate SIOCETHTOOL, which psutil.net_if_stats() uses: see
  # qemu_ethtool_shim.py. Only the daemon calls it; the CLI starts without the shim.
  ARMHF_CHECK_ETHTOOL_SHIM=1 "$@" >"$AGENT_LOG" 2>&1 &
  AGENT_PID=$!
  wait_until "agent ready" florete-agent version
}

stop_agent() {
  local rc=0
  kill -TERM "$AGENT_PID"
  wait "$AGENT_PID" || rc=$?
  AGENT_PID=""
  echo "(agent stopped by SIGTERM: exit status $rc)"
  return "$rc"
}

on_exit() {  # after a failure: delete the pods (they outlive the agent), then stop the agent
  local rc=$?
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    florete-agent delete pod hello web --timeout 60 >/dev/null 2>&1 || true
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" || true
  fi
  exit "$rc"
}
trap on_exit EXIT

run() {
  show uname -m
  show python3 -c 'import platform; print(platform.machine())'
  start_agent florete-agent run
  show florete-agent version
  show florete-agent status
  show florete-agent apply -f "$EXAMPLES"
  wait_until "both pods Running" pods_running
  show florete-agent get pods -o wide
  if [ -n "${CHECK_INSTALLED:-}" ]; then
    # Every dependency from where packaging/dependencies.toml says, and each optional feature
    # at work (pairing, QR, SSH, MQTT, supernode; the TUI and `pair` on this agent).
    show python3 -I "$CHECK_INSTALLED" --agent --timeout "$TIMEOUT"
  fi
  show florete-agent logs hello
  show florete-agent delete pod hello web
  show florete-agent get pods
  stop_agent
  echo "--- agent log"
  cat "$AGENT_LOG"
}

# The daemon under tracemalloc: SIGUSR1 appends "current peak overhead" (bytes) to HEAP_FILE.
# shellcheck disable=SC2016  # Python source
HEAP_WRAPPER='
import signal, sys, tracemalloc

def dump(signum, frame):
    current, peak = tracemalloc.get_traced_memory()
    with open(sys.argv[1], "a") as out:
        out.write(f"{current} {peak} {tracemalloc.get_tracemalloc_memory()}\n")

signal.signal(signal.SIGUSR1, dump)
from agent.cli import main
sys.exit(main(["run"]))
'

heap() {  # heap LABEL: ask the daemon for its traced memory, print a FIGURE line
  local before start=$SECONDS
  before=$(wc -l <"$HEAP_FILE")
  kill -USR1 "$AGENT_PID"
  until [ "$(wc -l <"$HEAP_FILE")" -gt "$before" ]; do
    ((SECONDS - start < 60)) || { echo "no heap figure from the daemon" >&2; return 1; }
    sleep 0.2
  done
  tail -n1 "$HEAP_FILE" | awk -v label="$1" '{
    printf "FIGURE heap %-22s current %5.2f MiB  peak %5.2f MiB  (tracemalloc own %4.2f MiB)\n",
      label, $1 / 1048576, $2 / 1048576, $3 / 1048576 }'
}

measure() {
  echo "import time of agent.daemon (seconds, 5 fresh interpreters; bare startup for reference):"
  for _ in 1 2 3 4 5; do
    python3 -c 'import time; t = time.perf_counter(); import agent.daemon
print(f"{time.perf_counter() - t:.3f}")'
  done | sort -n | tee /tmp/fl-import | tr '\n' ' '
  echo
  python3 -X importtime -c 'import agent.daemon' 2>&1 | sort -t'|' -k2 -n | tail -n 6
  awk 'NR == 1 { min = $1 } NR == 3 { med = $1 } END {
    printf "FIGURE import agent.daemon      median %.2f s, min %.2f s (under qemu)\n", med, min }' \
    /tmp/fl-import
  local t0 t1 t2
  t0=$(date +%s%N)
  python3 -c pass
  t1=$(date +%s%N)
  florete-agent --version >/dev/null
  t2=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
    printf "FIGURE wall python3 -c pass %.2f s, florete-agent --version %.2f s (under qemu)\n",
      (b - a) / 1e9, (c - b) / 1e9 }'
  python3 -X tracemalloc=1 -c 'import tracemalloc, agent.daemon
c, p = tracemalloc.get_traced_memory()
print(f"FIGURE heap after import agent.daemon current {c / 1048576:5.2f} MiB  peak {p / 1048576:5.2f} MiB")'

  : >"$HEAP_FILE"
  PYTHONTRACEMALLOC=1 start_agent python3 -c "$HEAP_WRAPPER" "$HEAP_FILE"
  heap "after start"
  florete-agent apply -f "$EXAMPLES"
  wait_until "both pods Running" pods_running
  heap "with 2 pods Running"
  sleep 30
  heap "with 2 pods, +30 s"
  florete-agent delete pod hello web
  heap "after delete"
  stop_agent
}

case $MODE in
  run) run ;;
  measure) measure ;;
  *) echo "usage: in-chroot.sh run|measure" >&2; exit 2 ;;
esac
