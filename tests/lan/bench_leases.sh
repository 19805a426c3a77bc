#!/usr/bin/env bash
# Benchmark on five LAN hosts (network namespaces on one bridge,
# 10.81.0.0/24, created and removed here; nothing leaves the machine):
#
#   lease:    `shoal lease run NAME -- true` from host 1 (the name's home is
#             all five hosts) and `shoal device use lat-h2 -- true` from
#             host 1 (a device's lease, granted by its provider, host 2)
#             against `etcdctl lock NAME true` from host 1 to a three-member
#             etcd cluster on hosts 3-5, alternating, RUNS times each:
#             p50/p99 ms.
#   cut off:  host 4 holds echo-h2 (a connection open through it), host 5
#             waits in line; host 4's link goes down: the time until host
#             5 gets the device, and whether host 4's old connection is
#             refused once its link is back.
#   failover: hosts 2 and 3 each share a TCP echo service as class `echo`;
#             host 1 runs `shoal device use --class echo --listen`; the
#             provider in use is killed with kill -9: the time until a new
#             connection to host 1's port is echoed through the other.
#
# Usage: sudo tests/lan/bench_leases.sh [SHOAL_BINARY] [RUNS]
#        (defaults: target/release/shoal 200); needs etcd-server etcd-client
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
RUNS=${2:-200}
PREFIX=shoal-lb
HOSTS=5
WORK=$(mktemp -d /tmp/shoal-lb.XXXXXX)
cleanup() {
  for i in $(seq $HOSTS); do
    ip netns pids "$PREFIX-h$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$PREFIX-h$i" 2>/dev/null || true
  done
  ip netns del "$PREFIX-sw" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "error: needs root (network namespaces)" >&2; exit 1; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "needs etcd and etcdctl: apt-get install etcd-server etcd-client" >&2; exit 1; }
cleanup 2>/dev/null || true
WORK=$(mktemp -d /tmp/shoal-lb.XXXXXX)

ip netns add "$PREFIX-sw"
ip -n "$PREFIX-sw" link add br0 type bridge
ip -n "$PREFIX-sw" link set br0 up
for i in $(seq $HOSTS); do
  ns="$PREFIX-h$i"
  ip netns add "$ns"
  ip link add "lb$i" netns "$ns" type veth peer name "lp$i" netns "$PREFIX-sw"
  ip -n "$PREFIX-sw" link set "lp$i" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.81.0.$i/24" dev "lb$i"
  ip -n "$ns" link set "lb$i" up
done
on() { local i=$1; shift; ip netns exec "$PREFIX-h$i" "$@"; }

up() {
  local i=$1 boot=()
  [ "$i" -gt 1 ] && boot=(--bootstrap "$(grep -m1 'listening on' "$WORK/h1.out" | awk '{print $3}')")
  mkdir -p "$WORK/h$i"
  # Not through `on`: $! must be the peer itself, for the kill below.
  ip netns exec "$PREFIX-h$i" "$SHOAL" up --no-mdns --data-dir "$WORK/h$i" --slots 0 \
    --listen "/ip4/10.81.0.$i/tcp/4001" "${boot[@]}" >"$WORK/h$i.out" 2>>"$WORK/h$i.log" &
  echo $! >"$WORK/h$i.pid"
  disown
  for _ in $(seq 100); do grep -q '^ready' "$WORK/h$i.out" 2>/dev/null && return; sleep 0.1; done
  echo "host $i did not start" >&2; exit 1
}
for i in $(seq $HOSTS); do up "$i"; done
for _ in $(seq 100); do
  [ "$(on 1 "$SHOAL" peers --json --data-dir "$WORK/h1" | grep -o '"peer_id"' | wc -l)" -ge 4 ] && break
  sleep 0.2
done

cluster="e3=http://10.81.0.3:2380,e4=http://10.81.0.4:2380,e5=http://10.81.0.5:2380"
for i in 3 4 5; do
  on "$i" etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://10.81.0.$i:2379" --advertise-client-urls "http://10.81.0.$i:2379" \
    --listen-peer-urls "http://10.81.0.$i:2380" --initial-advertise-peer-urls "http://10.81.0.$i:2380" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$WORK/etcd$i.log" 2>&1 &
  disown
done
ENDPOINTS=http://10.81.0.3:2379,http://10.81.0.4:2379,http://10.81.0.5:2379
for _ in $(seq 100); do
  ETCDCTL_API=3 on 1 etcdctl --endpoints=$ENDPOINTS endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

# A device on host 2 for its lease's latency (an echo nobody connects to).
on 2 python3 tests/bench/stream_ways.py echo 127.0.0.1 7008 &
disown
on 2 "$SHOAL" device share lat-h2 --class lat --tcp 127.0.0.1:7008 --data-dir "$WORK/h2"

echo "== lease: shoal lease run and shoal device use vs etcdctl lock, from host 1, $RUNS runs each"
python3 - "$SHOAL" "$WORK" "$PREFIX" "$RUNS" "$ENDPOINTS" <<'PY'
import os, subprocess, sys, time
shoal, work, prefix, runs, endpoints = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
env = dict(os.environ, ETCDCTL_API="3")
def timed(args):
    t = time.perf_counter()
    r = subprocess.run(["ip", "netns", "exec", f"{prefix}-h1", *args], capture_output=True, text=True, env=env)
    ms = (time.perf_counter() - t) * 1e3
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return ms
name = "lan/lock"
device = [shoal, "device", "use", "lat-h2", "--data-dir", f"{work}/h1", "--", "true"]
timed([shoal, "lease", "run", name, "--data-dir", f"{work}/h1", "--", "true"])
timed(device)
timed(["etcdctl", f"--endpoints={endpoints}", "lock", name, "true"])
s, d, e = [], [], []
for _ in range(runs):
    s.append(timed([shoal, "lease", "run", name, "--data-dir", f"{work}/h1", "--", "true"]))
    d.append(timed(device))
    e.append(timed(["etcdctl", f"--endpoints={endpoints}", "lock", name, "true"]))
def pct(xs, p):
    xs = sorted(xs); return xs[round((len(xs) - 1) * p)]
print(f"  shoal lease run -- true (5 members)  p50 {pct(s, .5):6.1f} ms  p99 {pct(s, .99):6.1f} ms")
print(f"  shoal device use -- true (host 2)    p50 {pct(d, .5):6.1f} ms  p99 {pct(d, .99):6.1f} ms")
print(f"  etcdctl lock -- true (3 members)     p50 {pct(e, .5):6.1f} ms  p99 {pct(e, .99):6.1f} ms")
PY

echo "== failover: kill -9 of the provider in use, class echo on hosts 2 and 3"
for i in 2 3; do
  on "$i" python3 -c '
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 7007)); s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
' &
  disown
  sleep 0.3
  on "$i" "$SHOAL" device share "echo-h$i" --class echo --tcp 127.0.0.1:7007 --data-dir "$WORK/h$i"
done
for _ in $(seq 100); do
  [ "$(on 1 "$SHOAL" device ls --class echo --json --data-dir "$WORK/h1" | grep -o '"name"' | wc -l)" = 2 ] && break
  sleep 0.2
done
echo "== cut off: host 4 holds echo-h2 with a connection open, host 5 waits; host 4's link goes down"
on 4 "$SHOAL" device use echo-h2 --listen 127.0.0.1:7200 --data-dir "$WORK/h4" 2>"$WORK/use4.log" &
disown
for _ in $(seq 100); do grep -q reaches "$WORK/use4.log" && break; sleep 0.1; done
on 5 "$SHOAL" device use echo-h2 --data-dir "$WORK/h5" -- sh -c "date +%s.%N > $WORK/h5.got" 2>"$WORK/use5.log" &
disown
for _ in $(seq 100); do grep -q waiting "$WORK/use5.log" && break; sleep 0.1; done
on 4 python3 - "$WORK" "$PREFIX" <<'PY'
import socket, subprocess, sys, time, os
work, prefix = sys.argv[1], sys.argv[2]
c = socket.create_connection(("127.0.0.1", 7200), timeout=5); c.settimeout(5)
c.sendall(b"one"); assert c.recv(3) == b"one", "no echo before the cut"
subprocess.run(["ip", "link", "set", "lb4", "down"], check=True)
cut = time.time()
while not os.path.exists(f"{work}/h5.got"):
    time.sleep(0.05)
    if time.time() - cut > 60: sys.exit("host 5 never got the device")
time.sleep(0.2)
got = float(open(f"{work}/h5.got").read())
print(f"  host 5 got the device {(got - cut) * 1e3:.0f} ms after host 4's link went down (term 10 s)")
subprocess.run(["ip", "link", "set", "lb4", "up"], check=True)
time.sleep(3)
try:
    c.sendall(b"two"); data = c.recv(100)
except OSError as e:
    data = b""
print(f"  host 4's old connection after the link came back: {'ECHOED (stale holder served!)' if b'two' in data else 'refused, closed'}")
PY
on 1 "$SHOAL" device use --class echo --listen 127.0.0.1:7100 --data-dir "$WORK/h1" 2>"$WORK/use.log" &
disown
for _ in $(seq 100); do grep -q reaches "$WORK/use.log" && break; sleep 0.1; done
# The provider in use, as the listing's holders say.
held=$(on 1 "$SHOAL" device ls --class echo --json --data-dir "$WORK/h1" | python3 -c '
import json, sys
print(next(d["name"][-1] for d in json.load(sys.stdin) if d["holders"]))')
on 1 python3 - "$(cat "$WORK/h$held.pid")" "$held" <<'PY'
import os, signal, socket, sys, time
pid, held = int(sys.argv[1]), sys.argv[2]
def works():
    try:
        c = socket.create_connection(("127.0.0.1", 7100), timeout=1); c.settimeout(1)
        c.sendall(b"ping"); ok = c.recv(4) == b"ping"; c.close(); return ok
    except OSError:
        return False
assert works(), "the device does not answer before the kill"
t = time.perf_counter(); os.kill(pid, signal.SIGKILL)
while not works():
    time.sleep(0.02)
    if time.perf_counter() - t > 120: sys.exit("no failover in 120 s")
print(f"  provider on host {held} killed: host 1's port works again after {(time.perf_counter() - t) * 1e3:.0f} ms")
PY
