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
python3 - "$ECHO" <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(1 << 20)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
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

python3 - "$ROUNDS" "$MIB" "$ECHO" "$SOCAT" "$SHOAL_PORT" <<'PY'
import socket, sys, threading, time
rounds, mib = int(sys.argv[1]), int(sys.argv[2])
ways = [("direct", int(sys.argv[3])), ("socat", int(sys.argv[4])), ("shoal device use", int(sys.argv[5]))]

def conn(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c

def latency(port):
    c = conn(port); msg = b"x" * 64; out = []
    for i in range(rounds + 100):
        t = time.perf_counter_ns(); c.sendall(msg); got = 0
        while got < 64: got += len(c.recv(64 - got))
        if i >= 100: out.append((time.perf_counter_ns() - t) / 1e3)
    c.close(); out.sort()
    return out[len(out) // 2], out[round((len(out) - 1) * 0.99)]

def throughput(port):
    c = conn(port); total = mib << 20; chunk = b"y" * (1 << 16)
    def send():
        left = total
        while left > 0:
            n = min(left, len(chunk)); c.sendall(chunk[:n]); left -= n
    t = time.perf_counter(); th = threading.Thread(target=send); th.start(); got = 0
    while got < total:
        d = c.recv(1 << 20)
        if not d: break
        got += len(d)
    th.join(); s = time.perf_counter() - t; c.close()
    return got / (1 << 20) / s

results = {}
# Interleaved: each way measured twice, alternating; the better of each.
for rep in range(2):
    for name, port in ways:
        p50, p99 = latency(port); tput = throughput(port)
        best = results.get(name)
        if best is None or p99 < best[1]: results[name] = (p50, p99, max(tput, best[2] if best else 0))
        else: results[name] = (best[0], best[1], max(tput, best[2]))
direct = results["direct"]
print(f"{rounds} round trips of 64 B; {mib} MiB echoed; loopback; best of 2 interleaved runs")
print(f"  {'':<18} {'p50 µs':>8} {'p99 µs':>8} {'p99 added':>10} {'MiB/s':>8} {'of direct':>10}")
for name, _ in ways:
    p50, p99, tput = results[name]
    print(f"  {name:<18} {p50:8.0f} {p99:8.0f} {p99 - direct[1]:10.0f} {tput:8.0f} {tput / direct[2]:10.0%}")
PY
