#!/usr/bin/env bash
# Benchmark: failover of a device class. Two providers (b and c) each share
# a TCP echo service as class `echo`; peer a runs `shoal device use --class
# echo --listen`. The provider in use is killed with kill -9; the script
# measures the time from the kill until a new connection to a's local
# port gets its echo back through the other provider. RUNS times.
#
# Usage: tests/bench/device_failover.sh [SHOAL] [RUNS]
#   defaults: target/release/shoal 5
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
RUNS=${2:-5}
WORK=$(mktemp -d /tmp/shoal-bench-failover.XXXXXX)
. tests/bench/peers.sh
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_peers
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_on() {
  python3 - "$1" <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
  PIDS+=($!)
}

up a 0
times=()
for run in $(seq "$RUNS"); do
  for n in b c; do
    rm -rf "$WORK/$n"
    up "$n" 0 --bootstrap "$(addr_of a)"
    port=$(free_port); echo_on "$port"
    "$SHOAL" device share "echo-$n" --class echo --tcp "127.0.0.1:$port" --data-dir "$WORK/$n"
  done
  for _ in $(seq 100); do
    [ "$("$SHOAL" device ls --class echo --json --data-dir "$WORK/a" | grep -o '"name"' | wc -l)" = 2 ] && break
    sleep 0.1
  done
  LOCAL=$(free_port)
  "$SHOAL" device use --class echo --listen "127.0.0.1:$LOCAL" --data-dir "$WORK/a" 2>"$WORK/use.log" &
  USE=$!
  for _ in $(seq 100); do grep -q reaches "$WORK/use.log" && break; sleep 0.1; done
  held=$(sed -nE 's/.*device "echo-(.)".*/\1/p' "$WORK/use.log" | tail -1)
  ms=$(python3 - "$LOCAL" "$(cat "$WORK/$held.pid")" <<'PY'
import os, signal, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
def works():
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=1); c.settimeout(1)
        c.sendall(b"ping"); ok = c.recv(4) == b"ping"; c.close(); return ok
    except OSError:
        return False
assert works(), "the device does not answer before the kill"
t = time.perf_counter(); os.kill(pid, signal.SIGKILL)
while not works():
    time.sleep(0.05)
    if time.perf_counter() - t > 120: sys.exit("no failover in 120 s")
print(f"{(time.perf_counter() - t) * 1e3:.0f}")
PY
)
  echo "run $run: provider $held killed; the local port works again after $ms ms"
  times+=("$ms")
  kill "$USE" 2>/dev/null || true; wait "$USE" 2>/dev/null || true
  for n in b c; do kill -9 "$(cat "$WORK/$n.pid")" 2>/dev/null || true; done
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "failover ms: min " a[1] ", median " a[int((NR+1)/2)] ", max " a[NR]}'
