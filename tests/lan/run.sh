#!/usr/bin/env bash
# LAN test: five hosts as network namespaces on one bridge, each running
# `shoal up` with mDNS on and no bootstrap address. Checks that mDNS alone
# forms the overlay and a record crosses hosts; then kills one host (kill -9),
# cuts another off (link down), heals it, and checks the overlay recovers;
# then a file crosses hosts.
#
# Usage: sudo tests/lan/run.sh [PATH_TO_SHOAL_BINARY]   (default target/debug/shoal)
# All addresses (10.77.0.0/24) live inside namespaces this script creates and
# removes; nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=${1:-target/debug/shoal}
HOSTS=5
PREFIX=shoal-lan
WORK=$(mktemp -d /tmp/shoal-lan.XXXXXX)
pass=0
fail=0

say() { printf '%s\n' "$*"; }
check() { # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then pass=$((pass + 1)); say "ok   - $name"; else fail=$((fail + 1)); say "FAIL - $name"; fi
}

cleanup() {
  for i in $(seq 1 $HOSTS); do
    ip netns pids "$PREFIX-h$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$PREFIX-h$i" 2>/dev/null || true
  done
  ip netns del "$PREFIX-sw" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null; then
  say "error: the LAN test needs root and iproute2 (ip netns) to build its hosts" >&2
  exit 1
fi
[ -x "$SHOAL" ] || { say "error: no shoal binary at $SHOAL (cargo build -p shoal-node)" >&2; exit 1; }
cleanup 2>/dev/null || true
WORK=$(mktemp -d /tmp/shoal-lan.XXXXXX)

# The switch: a bridge inside its own namespace, so the host is untouched.
if ! ip netns add "$PREFIX-sw"; then
  say "error: cannot create network namespaces here" >&2
  exit 1
fi
ip -n "$PREFIX-sw" link add br0 type bridge
ip -n "$PREFIX-sw" link set br0 up
for i in $(seq 1 $HOSTS); do
  ns="$PREFIX-h$i"
  ip netns add "$ns"
  ip link add "shl$i" netns "$ns" type veth peer name "port$i" netns "$PREFIX-sw"
  ip -n "$PREFIX-sw" link set "port$i" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.77.0.$i/24" dev "shl$i"
  ip -n "$ns" link set "shl$i" up
  ip -n "$ns" route add 224.0.0.0/4 dev "shl$i"
done

start() { # start HOST
  local i=$1
  mkdir -p "$WORK/h$i"
  ip netns exec "$PREFIX-h$i" "$SHOAL" up --data-dir "$WORK/h$i" \
    --listen "/ip4/10.77.0.$i/tcp/0" --listen "/ip4/10.77.0.$i/udp/0/quic-v1" \
    >"$WORK/h$i.out" 2>"$WORK/h$i.log" &
  echo $! >"$WORK/h$i.pid"
  disown  # its kill -9 later is the test, not news
}
cli() { # cli HOST ARGS...
  local i=$1; shift
  ip netns exec "$PREFIX-h$i" "$SHOAL" "$@" --data-dir "$WORK/h$i"
}
peers_of() { cli "$1" peers --json 2>/dev/null | grep -o '"peer_id"' | wc -l; }
wait_for() { # wait_for SECONDS COMMAND...
  local until=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $until ]; do "$@" && return 0; sleep 0.5; done
  return 1
}
all_see() { # every running host sees at least N peers
  local n=$1; shift
  for i in "$@"; do [ "$(peers_of "$i")" -ge "$n" ] || return 1; done
}

for i in $(seq 1 $HOSTS); do start "$i"; done
for i in $(seq 1 $HOSTS); do wait_for 20 test -f "$WORK/h$i/control.json" || true; done

check "mDNS alone forms the overlay (every host sees all 4 others)" wait_for 30 all_see 4 1 2 3 4 5
KEY=$(printf 'cd%.0s' $(seq 32))
check "a record put on host 1 is stored at its home" wait_for 10 sh -c "ip netns exec $PREFIX-h1 $SHOAL record put $KEY across-the-lan --data-dir $WORK/h1 | grep -q 'stored at 3'"
check "host 3 reads it" sh -c "[ \"\$(ip netns exec $PREFIX-h3 $SHOAL record get $KEY --data-dir $WORK/h3)\" = across-the-lan ]"

kill -9 "$(cat "$WORK/h5.pid")"
ip -n "$PREFIX-h4" link set shl4 down
lookups_work() { cli "$1" lookup "$KEY" --json >/dev/null 2>&1; }
check "after a kill -9 and a cut, lookups still work on host 2" wait_for 30 lookups_work 2
check "the record survives (read on host 2)" sh -c "[ \"\$(ip netns exec $PREFIX-h2 $SHOAL record get $KEY --data-dir $WORK/h2)\" = across-the-lan ]"

ip -n "$PREFIX-h4" link set shl4 up
ip -n "$PREFIX-h4" route replace 224.0.0.0/4 dev shl4
check "the healed host finds the others again and reads the record" wait_for 60 sh -c "[ \"\$(ip netns exec $PREFIX-h4 $SHOAL record get $KEY --data-dir $WORK/h4 2>/dev/null)\" = across-the-lan ]"
start 5
check "the killed host restarts and rejoins" wait_for 60 all_see 3 5

# A file shared on host 1 and fetched on host 3 (found through the overlay)
# and on host 2 (through the ticket), byte-identical.
head -c 3000000 /dev/urandom >"$WORK/file.bin"
ID=$(cli 1 share "$WORK/file.bin" --json | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)
TICKET=$(cli 1 share "$WORK/file.bin" --json | grep -o '"ticket":"[a-z0-9]*"' | cut -d'"' -f4)
check "a file shared on host 1 is fetched on host 3 by id" wait_for 30 sh -c "ip netns exec $PREFIX-h3 $SHOAL get $ID -o $WORK/h3.file --data-dir $WORK/h3 >/dev/null 2>&1 && cmp -s $WORK/file.bin $WORK/h3.file"
check "and on host 2 by ticket" sh -c "ip netns exec $PREFIX-h2 $SHOAL get $TICKET -o $WORK/h2.file --data-dir $WORK/h2 >/dev/null && cmp -s $WORK/file.bin $WORK/h2.file"
check "a get into a directory that does not exist says so before downloading" sh -c "! ip netns exec $PREFIX-h2 $SHOAL get $TICKET -o $WORK/no-such-dir/x --data-dir $WORK/h2 2>$WORK/nodir.err && grep -q 'no-such-dir is not a directory' $WORK/nodir.err"

# A download onto a full disk stops with a clear error: a second peer on
# host 2 keeps its data on a 1 MiB tmpfs (in a private mount namespace).
disk_full() {
  ip netns exec "$PREFIX-h2" unshare -m bash -c "
    mkdir -p $WORK/tiny && mount -t tmpfs -o size=1m tmpfs $WORK/tiny
    $SHOAL up --no-mdns --data-dir $WORK/tiny/d --listen /ip4/10.77.0.2/tcp/0 \
      --bootstrap \$(grep -m1 'listening on /ip4/10.77.0.1/tcp' $WORK/h1.out | awk '{print \$3}') >/dev/null 2>&1 &
    for _ in \$(seq 100); do [ -f $WORK/tiny/d/control.json ] && break; sleep 0.1; done
    $SHOAL get $TICKET -o $WORK/tiny/out.bin --data-dir $WORK/tiny/d 2>$WORK/tiny.err
    status=\$?
    $SHOAL down --data-dir $WORK/tiny/d >/dev/null 2>&1
    sleep 0.5
    [ \$status -ne 0 ] && grep -q 'disk full: ' $WORK/tiny.err"
}
check "a download onto a full disk fails with a clear error" disk_full

# Sharing onto a full disk says so, and does not blame the file.
share_disk_full() {
  ip netns exec "$PREFIX-h2" unshare -m bash -c "
    mkdir -p $WORK/tiny2 && mount -t tmpfs -o size=1m tmpfs $WORK/tiny2
    $SHOAL up --no-mdns --data-dir $WORK/tiny2/d --listen /ip4/10.77.0.2/tcp/0 >/dev/null 2>&1 &
    for _ in \$(seq 100); do [ -f $WORK/tiny2/d/control.json ] && break; sleep 0.1; done
    $SHOAL share $WORK/file.bin --data-dir $WORK/tiny2/d >/dev/null 2>$WORK/tiny2.err
    status=\$?
    $SHOAL down --data-dir $WORK/tiny2/d >/dev/null 2>&1
    sleep 0.5
    [ \$status -ne 0 ] && grep -q 'No space left on device' $WORK/tiny2.err && ! grep -q 'cannot read' $WORK/tiny2.err"
}
check "a share onto a full disk says the disk is full" share_disk_full

if [ $fail -gt 0 ]; then
  for i in $(seq 1 $HOSTS); do say "--- host $i log (tail)"; tail -5 "$WORK/h$i.log" || true; done
fi
say "lan: $pass passed, $fail failed"
[ $fail -eq 0 ]
