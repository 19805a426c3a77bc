#!/usr/bin/env bash
# Benchmark on two LAN hosts (network namespaces joined by one veth pair,
# 10.82.0.0/24, created and removed here; nothing leaves the machine): the
# overhead of reaching a device through shoal across a link, side by side
# in one run. Host 2 runs a TCP echo service and shares it (`shoal device
# share --tcp`); host 1 reaches it three ways: directly across the link,
# through `socat` on host 1 (a plain relay, as `ssh -L` would be), and
# through `shoal device use --listen` on host 1.
#
# With RATE (e.g. 1gbit) both ends of the link are shaped to that rate
# (`tc tbf`, as tests/lan/bench_files.sh does): a LAN's link. Without it
# the veth pair is as fast as the machine.
#
# Prints, for each way: p50/p99 µs of 64-byte round trips and what each
# adds to the direct p99, and MiB/s of MIB MiB echoed (sent and read back
# at once) — tests/bench/stream_ways.py.
#
# Usage: sudo tests/lan/bench_device_stream.sh [SHOAL] [ROUNDS] [MIB] [RATE]
#        (defaults: target/release/shoal 2000 256, no shaping); needs socat
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
ROUNDS=${2:-2000}
MIB=${3:-256}
RATE=${4:-}
PREFIX=shoal-ds
WORK=
cleanup() {
  for i in 1 2; do
    ip netns pids "$PREFIX-h$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$PREFIX-h$i" 2>/dev/null || true
  done
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "error: needs root (network namespaces)" >&2; exit 1; }
command -v socat >/dev/null || { echo "needs socat: apt-get install socat" >&2; exit 1; }
cleanup 2>/dev/null || true
WORK=$(mktemp -d /tmp/shoal-ds.XXXXXX)

ip netns add "$PREFIX-h1"
ip netns add "$PREFIX-h2"
ip link add ds1 netns "$PREFIX-h1" type veth peer name ds2 netns "$PREFIX-h2"
for i in 1 2; do
  ip -n "$PREFIX-h$i" link set lo up
  ip -n "$PREFIX-h$i" addr add "10.82.0.$i/24" dev "ds$i"
  ip -n "$PREFIX-h$i" link set "ds$i" up
  if [ -n "$RATE" ]; then
    ip netns exec "$PREFIX-h$i" tc qdisc add dev "ds$i" root tbf rate "$RATE" burst 256kb latency 50ms
  fi
done
on() { local i=$1; shift; ip netns exec "$PREFIX-h$i" "$@"; }

on 2 python3 tests/bench/stream_ways.py echo 0.0.0.0 7007 &
disown
up() {
  local i=$1 boot=()
  [ "$i" -gt 1 ] && boot=(--bootstrap "$(grep -m1 'listening on' "$WORK/h1.out" | awk '{print $3}')")
  on "$i" "$SHOAL" up --no-mdns --data-dir "$WORK/h$i" --slots 0 \
    --listen "/ip4/10.82.0.$i/tcp/4001" "${boot[@]}" >"$WORK/h$i.out" 2>>"$WORK/h$i.log" &
  disown
  for _ in $(seq 100); do grep -q '^ready' "$WORK/h$i.out" 2>/dev/null && return; sleep 0.1; done
  echo "host $i did not start" >&2; exit 1
}
up 1
up 2
on 2 "$SHOAL" device share echo --class bench --tcp 127.0.0.1:7007 --data-dir "$WORK/h2"
on 1 socat TCP-LISTEN:7100,fork,reuseaddr,nodelay TCP:10.82.0.2:7007,nodelay &
disown
on 1 "$SHOAL" device use echo --listen 127.0.0.1:7200 --data-dir "$WORK/h1" 2>"$WORK/use.log" &
disown
for _ in $(seq 100); do grep -q reaches "$WORK/use.log" && break; sleep 0.1; done
grep -q reaches "$WORK/use.log" || { cat "$WORK/use.log"; exit 1; }

where="two LAN hosts, link ${RATE:-unshaped}"
on 1 python3 tests/bench/stream_ways.py measure "$ROUNDS" "$MIB" "$where" \
  "direct=10.82.0.2:7007" "socat=127.0.0.1:7100" "shoal device use=127.0.0.1:7200"
