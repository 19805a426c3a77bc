#!/usr/bin/env bash
# Benchmark: how long it takes to take a named lock, side by side in one
# run: `shoal lease` on five loopback peers (the name's home is all five;
# a grant needs three) against an etcd lock (`etcdctl lock`, Debian's
# etcd-server) on a three-member etcd cluster on loopback. Both sync
# their state to disk before they answer. Uncontended: one lock at a
# time, taken and let go RUNS times; the two tools alternate.
#
# Prints p50/p99 (ms) of:
#   - shoal lease acquire NAME   (until the daemon holds it; the CLI exits)
#   - shoal lease run NAME -- true     (take, run `true`, let go)
#   - shoal device use DEVICE -- true  (a device's lease from its provider,
#                                        peer b: take, run `true`, let go)
#   - etcdctl lock NAME true           (take, run `true`, let go)
#
# Usage: tests/bench/lease_latency.sh [SHOAL] [RUNS]
#   defaults: target/release/shoal 200
#   needs: apt-get install etcd-server etcd-client
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
RUNS=${2:-200}
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "needs etcd and etcdctl: apt-get install etcd-server etcd-client" >&2; exit 1; }
WORK=$(mktemp -d /tmp/shoal-bench-lease.XXXXXX)
. tests/bench/peers.sh
ETCD_PIDS=()
cleanup() {
  stop_peers
  for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

up a 0
for n in b c d e; do up $n 0 --bootstrap "$(addr_of a)"; done
ECHO=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 tests/bench/stream_ways.py echo 127.0.0.1 "$ECHO" &
ETCD_PIDS+=($!)
"$SHOAL" device share bench-dev --class bench --tcp "127.0.0.1:$ECHO" --data-dir "$WORK/b"

cluster=""
for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((23800 + i)),"; done
cluster=${cluster%,}
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((23790 + i))" --advertise-client-urls "http://127.0.0.1:$((23790 + i))" \
    --listen-peer-urls "http://127.0.0.1:$((23800 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$WORK/etcd$i.log" 2>&1 &
  ETCD_PIDS+=($!)
done
ENDPOINTS=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints=$ENDPOINTS endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
# Every shoal peer knows the others before the first lease.
for _ in $(seq 100); do
  [ "$("$SHOAL" peers --json --data-dir "$WORK/a" | grep -o '"peer_id"' | wc -l)" -ge 4 ] && break
  sleep 0.2
done

python3 - "$SHOAL" "$WORK" "$RUNS" "$ENDPOINTS" <<'PY'
import os, subprocess, sys, time
shoal, work, runs, endpoints = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
env = dict(os.environ, ETCDCTL_API="3")

def timed(args):
    t = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    ms = (time.perf_counter() - t) * 1e3
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return ms

acquire, shoal_run, device_run, etcd_run = [], [], [], []
name = "bench/lock"
device = [shoal, "device", "use", "bench-dev", "--data-dir", f"{work}/a", "--", "true"]
# One of each first, not counted (connections, the name's first use).
timed([shoal, "lease", "run", name, "--data-dir", f"{work}/a", "--", "true"])
timed(device)
timed(["etcdctl", f"--endpoints={endpoints}", "lock", name, "true"])
for i in range(runs):
    acquire.append(timed([shoal, "lease", "acquire", name, "--data-dir", f"{work}/a"]))
    timed([shoal, "lease", "release", name, "--data-dir", f"{work}/a"])
    shoal_run.append(timed([shoal, "lease", "run", name, "--data-dir", f"{work}/a", "--", "true"]))
    device_run.append(timed(device))
    etcd_run.append(timed(["etcdctl", f"--endpoints={endpoints}", "lock", name, "true"]))

def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]

print(f"{runs} runs each, uncontended, loopback; ms p50 / p99")
for label, xs in [("shoal lease acquire (5 members)", acquire),
                  ("shoal lease run -- true (5 members)", shoal_run),
                  ("shoal device use -- true (its provider)", device_run),
                  ("etcdctl lock -- true (3 members)", etcd_run)]:
    print(f"  {label:<40} {pct(xs, 0.5):8.1f} / {pct(xs, 0.99):8.1f}")
PY
