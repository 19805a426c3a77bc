#!/usr/bin/env bash
# Benchmark: the overhead of reaching a device through shoal, side by side
# in one run. A TCP echo service on loopback is reached three ways: directly,
# through `socat` (a plain TCP relay, as a user would set one up), and
# through `shoal device use --listen` (two shoal peers on loopback: the
# provider shares the service with `--tcp`, the other forwards a local
# port to it; every frame's token is checked by the provider).
#
# Prints, for each way:
#   - request/response latency: one connection, ROUNDS round trips of 64
#     bytes, p50 / p99 in µs, and what shoal and socat add to the direct p99;
#   - throughput: MIB MiB through the echo (sent and read back at once),
#     MiB/s.
#
# Usage: tests/bench/device_stream.sh [SHOAL] [ROUNDS] [MIB]
#   defaults: target/release/shoal 5000 256
#   needs: socat (apt-get install socat)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
ROUNDS=${2:-5000}
MIB=${3:-256}
command -v socat >/dev/null || { echo "needs socat: apt-get install socat" >&2; exit 1; }
WORK=$(mktemp -d /tmp/shoal-bench-device.XXXXXX)
. tests/bench/peers.sh
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_peers
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ECHO=$(free_port)
python3 tests/bench/stream_ways.py echo 127.0.0.1 "$ECHO" &
PIDS+=($!)
SOCAT=$(free_port)
socat "TCP-LISTEN:$SOCAT,fork,reuseaddr,nodelay" "TCP:127.0.0.1:$ECHO,nodelay" &
PIDS+=($!)

up a 0
up b 0 --bootstrap "$(addr_of a)"
"$SHOAL" device share echo --class bench --tcp "127.0.0.1:$ECHO" --data-dir "$WORK/a"
SHOAL_PORT=$(free_port)
"$SHOAL" device use echo --listen "127.0.0.1:$SHOAL_PORT" --data-dir "$WORK/b" 2>"$WORK/use.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q reaches "$WORK/use.log" && break; sleep 0.1; done
grep -q reaches "$WORK/use.log" || { cat "$WORK/use.log"; exit 1; }

python3 tests/bench/stream_ways.py measure "$ROUNDS" "$MIB" loopback \
  "direct=127.0.0.1:$ECHO" "socat=127.0.0.1:$SOCAT" "shoal device use=127.0.0.1:$SHOAL_PORT"
