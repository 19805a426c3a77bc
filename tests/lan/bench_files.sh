#!/usr/bin/env bash
# Benchmark: one download from three providers whose links are each limited
# with tc (default 200 Mbit/s), against the same download from one of them.
# Four hosts as network namespaces on one bridge (10.78.0.0/24, inside
# namespaces this script creates and removes; nothing leaves the machine).
#
# Usage: sudo tests/lan/bench_files.sh [SHOAL_BINARY] [RATE] [MIB]
#        (defaults: target/release/shoal 200mbit 128)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=${1:-target/release/shoal}
RATE=${2:-200mbit}
MIB=${3:-128}
PREFIX=shoal-bench
WORK=$(mktemp -d /tmp/shoal-bench.XXXXXX)

cleanup() {
  for i in 1 2 3 4; do
    ip netns pids "$PREFIX-h$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$PREFIX-h$i" 2>/dev/null || true
  done
  ip netns del "$PREFIX-sw" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "error: needs root (network namespaces, tc)" >&2; exit 1; }
[ -x "$SHOAL" ] || { echo "error: no shoal binary at $SHOAL (cargo build --release -p shoal-node)" >&2; exit 1; }

ip netns add "$PREFIX-sw"
ip -n "$PREFIX-sw" link add br0 type bridge
ip -n "$PREFIX-sw" link set br0 up
for i in 1 2 3 4; do
  ns="$PREFIX-h$i"
  ip netns add "$ns"
  ip link add "bh$i" netns "$ns" type veth peer name "bp$i" netns "$PREFIX-sw"
  ip -n "$PREFIX-sw" link set "bp$i" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.78.0.$i/24" dev "bh$i"
  ip -n "$ns" link set "bh$i" up
done
# Each provider's uplink is limited (egress from the provider).
for i in 1 2 3; do
  ip netns exec "$PREFIX-h$i" tc qdisc add dev "bh$i" root tbf rate "$RATE" burst 256kb latency 50ms
done

cli() { local i=$1; shift; ip netns exec "$PREFIX-h$i" "$SHOAL" "$@" --data-dir "$WORK/h$i"; }
for i in 1 2 3 4; do
  mkdir -p "$WORK/h$i"
  boot=()
  [ "$i" -gt 1 ] && boot=(--bootstrap "$(grep -m1 'listening on' "$WORK/h1.out" | awk '{print $3}')")
  ip netns exec "$PREFIX-h$i" "$SHOAL" up --no-mdns --data-dir "$WORK/h$i" \
    --listen "/ip4/10.78.0.$i/tcp/0" "${boot[@]}" >"$WORK/h$i.out" 2>"$WORK/h$i.log" &
  disown
  for _ in $(seq 100); do grep -q ready "$WORK/h$i.out" 2>/dev/null && break; sleep 0.1; done
done
sleep 1

head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$WORK/one.bin"
head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$WORK/three.bin"
cli 1 share "$WORK/one.bin" >/dev/null
for i in 1 2 3; do cli "$i" share "$WORK/three.bin" >/dev/null; done
ONE=$(cli 1 share "$WORK/one.bin" --json | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)
THREE=$(cli 1 share "$WORK/three.bin" --json | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)

fetch() { # fetch ID NAME -> seconds
  local start end
  start=$(date +%s.%N)
  cli 4 get "$1" -o "$WORK/$2.got" >/dev/null
  end=$(date +%s.%N)
  cmp -s "$WORK/$2.bin" "$WORK/$2.got" || { echo "error: $2 differs" >&2; exit 1; }
  echo "$end - $start" | bc -l
}
t1=$(fetch "$ONE" one)
t3=$(fetch "$THREE" three)
printf '%s MiB, each provider limited to %s\n' "$MIB" "$RATE"
printf 'one provider:    %6.2f s  %7.1f MiB/s\n' "$t1" "$(echo "$MIB / $t1" | bc -l)"
printf 'three providers: %6.2f s  %7.1f MiB/s  (%.2fx)\n' "$t3" "$(echo "$MIB / $t3" | bc -l)" "$(echo "$t1 / $t3" | bc -l)"
grep -h "fetched" "$WORK/h4.log" | sed 's/^.*INFO //'
