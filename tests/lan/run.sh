#!/usr/bin/env bash
# LAN test: five hosts as network namespaces on one bridge, each running
# `shoal up` with mDNS on and no bootstrap address. Checks that mDNS alone
# forms the overlay and a record crosses hosts; then kills one host (kill -9),
# cuts another off (link down), heals it, and checks the overlay recovers;
# then a file crosses hosts, and a job runs beside its input on another
# host. Records get keys whose homes (their closest
# hosts) the kill and the cut hit, so that each check can fail.
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

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v python3 >/dev/null; then
  say "error: the LAN test needs root, iproute2 (ip netns) to build its hosts and python3 to read their answers" >&2
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
  ip netns exec "$PREFIX-h$i" "$SHOAL" up --data-dir "$WORK/h$i" --member-gone-after 2s \
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
# Who is who: each host's peer id and overlay key, so that the records
# below can be given homes that the kill and the cut then hit.
for i in $(seq 1 $HOSTS); do
  status=$(cli "$i" status --json)
  eval "PEER$i=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["peer_id"])' "$status")"
  eval "OKEY$i=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["key"])' "$status")"
done
# by_distance [EXCLUDE]: the first key (sha256 of a counter) whose three
# closest hosts leave out host EXCLUDE (none by default), then every host,
# closest first by XOR distance. Not every order is possible: XOR distance
# follows the hosts' keys' shared prefixes.
by_distance() {
  python3 - "${1:-0}" "$OKEY1" "$OKEY2" "$OKEY3" "$OKEY4" "$OKEY5" <<'PY'
import hashlib, sys
exclude, keys = int(sys.argv[1]), [int(k, 16) for k in sys.argv[2:]]
for count in range(100000):
    key = hashlib.sha256(b"shoal-lan-%d" % count).hexdigest()
    order = sorted(range(1, 6), key=lambda h: keys[h - 1] ^ int(key, 16))
    if exclude not in order[:3]:
        print(key, *order)
        break
PY
}
# KEY's home (its three closest hosts) leaves out host 1, which writes it.
# The kill and the cut take its two closest (DEAD, CUT), leaving one member
# (LIVE); host READER, outside the home, reads it and holds no copy.
read -r KEY DEAD CUT LIVE FAR1 FAR2 <<<"$(by_distance 1)"
READER=$FAR1; [ "$READER" = 1 ] && READER=$FAR2
[ -n "$KEY" ] || { say "error: no key with a home that leaves out host 1" >&2; exit 1; }
say "# record $KEY: home $DEAD $CUT $LIVE, read on $READER; host $DEAD is killed, host $CUT cut off"
peer_of() { eval "echo \$PEER$1"; }
put_at_home() { cli 1 record put "$KEY" across-the-lan >"$WORK/put.out" 2>&1 && grep -q 'stored at 3' "$WORK/put.out"; }
check "a record put on host 1 is stored at its home" wait_for 10 put_at_home
check "host $READER, outside its home, reads it" sh -c "[ \"\$(ip netns exec $PREFIX-h$READER $SHOAL record get $KEY --data-dir $WORK/h$READER)\" = across-the-lan ]"

kill -9 "$(cat "$WORK/h$DEAD.pid")"
ip -n "$PREFIX-h$CUT" link set "shl$CUT" down
# A lookup from the reader names only hosts that answer: not the killed
# host nor the cut one, and the live home member, the closest, first.
lookup_names_the_live() {
  local found
  found=$(cli "$READER" lookup "$KEY" --json 2>/dev/null) || return 1
  python3 -c '
import json, sys
ids = [p["peer_id"] for p in json.loads(sys.argv[1])["peers"]]
sys.exit(0 if ids and ids[0] == sys.argv[2] and not set(ids) & set(sys.argv[3:]) else 1)' \
    "$found" "$(peer_of "$LIVE")" "$(peer_of "$DEAD")" "$(peer_of "$CUT")"
}
check "after a kill -9 and a cut, a lookup names the closest live host and leaves out the dead" wait_for 60 lookup_names_the_live
check "the record survives the loss of two of its three home members (read on host $READER)" sh -c "[ \"\$(ip netns exec $PREFIX-h$READER $SHOAL record get $KEY --data-dir $WORK/h$READER)\" = across-the-lan ]"
# Each survivor, once it has asked the killed host (a lookup of its own
# key), marks it stale in its table: left out of lookups from then on.
marks_dead_stale() { # marks_dead_stale HOST
  cli "$1" lookup "$(eval "echo \$OKEY$DEAD")" >/dev/null 2>&1 || true
  python3 -c '
import json, sys
table = {p["peer_id"]: p.get("stale", False) for p in json.loads(sys.argv[1])}
sys.exit(0 if table.get(sys.argv[2], True) else 1)' "$(cli "$1" peers --json)" "$(peer_of "$DEAD")"
}
for i in $(seq 1 $HOSTS); do
  [ "$i" = "$DEAD" ] || [ "$i" = "$CUT" ] && continue
  check "host $i marks the killed host stale" wait_for 60 marks_dead_stale "$i"
done
# KEY2 is put while the cut host is cut off, and that host is its closest:
# healed, it can read it only from the others.
KEY2=$(eval "echo \$OKEY$CUT")
WRITER=1; [ "$CUT" = 1 ] && WRITER=$READER
check "a record put during the cut is stored" sh -c "ip netns exec $PREFIX-h$WRITER $SHOAL record put $KEY2 put-during-the-cut --data-dir $WORK/h$WRITER | grep -q 'stored at'"

ip -n "$PREFIX-h$CUT" link set "shl$CUT" up
ip -n "$PREFIX-h$CUT" route replace 224.0.0.0/4 dev "shl$CUT"
sees_live() { # sees_live HOST PEER_ID...: HOST's table holds each, not stale
  local host=$1; shift
  python3 -c '
import json, sys
table = {p["peer_id"]: p.get("stale", False) for p in json.loads(sys.argv[1])}
sys.exit(0 if all(table.get(p) is False for p in sys.argv[2:]) else 1)' "$(cli "$host" peers --json 2>/dev/null || echo '[]')" "$@"
}
others=()
for i in $(seq 1 $HOSTS); do [ "$i" = "$DEAD" ] || [ "$i" = "$CUT" ] || others+=("$(peer_of "$i")"); done
check "the healed host sees the other live hosts again" wait_for 180 sees_live "$CUT" "${others[@]}"
check "the healed host reads the record put while it was cut off" wait_for 60 sh -c "[ \"\$(ip netns exec $PREFIX-h$CUT $SHOAL record get $KEY2 --data-dir $WORK/h$CUT 2>/dev/null)\" = put-during-the-cut ]"
start "$DEAD"
check "the killed host restarts and rejoins" wait_for 60 all_see 3 "$DEAD"

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

# A job across hosts: count.wasm (built by Debian's clang) is submitted on
# host 1 with an input shared on host 4; it runs on host 4, beside its
# input, and its /out is fetched by id on host 2.
if examples/jobs/build.sh "$WORK/wasm" >/dev/null 2>"$WORK/wasm.err"; then
  seq 1 50000 >"$WORK/lines.txt"
  INPUT=$(cli 4 share "$WORK/lines.txt" --json | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)
  job_runs_beside_its_input() {
    ip netns exec "$PREFIX-h1" "$SHOAL" run --data-dir "$WORK/h1" --json --input "$INPUT:data" \
      "$WORK/wasm/count.wasm" >"$WORK/job.json" 2>"$WORK/job.err" || return 1
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["exit_code"] == 0 and r["peer"] == sys.argv[2] and r["output"] else 1)' "$WORK/job.json" "$(peer_of 4)"
  }
  check "a job submitted on host 1 runs on host 4, beside its input" wait_for 30 job_runs_beside_its_input
  grep -q '"exit_code":0' "$WORK/job.json" 2>/dev/null || say "# the job: $(cat "$WORK/job.json" "$WORK/job.err" 2>/dev/null | head -5)"
  OUT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["output"])' "$WORK/job.json" 2>/dev/null || echo none)
  check "its /out is fetched on host 2 by id" sh -c "ip netns exec $PREFIX-h2 $SHOAL get $OUT -o $WORK/job-out --data-dir $WORK/h2 >/dev/null && grep -qx '288894 bytes 50000 lines' $WORK/job-out/count.txt"
else
  fail=$((fail + 1)); say "FAIL - cannot build the example jobs (clang, wasi-libc): $(head -3 "$WORK/wasm.err")"
fi

# A named lease outlives three of its five hosts: its home is all five;
# each time one is killed, the set moves to the hosts left (members silent
# for 2 s are gone here), so after three of them the two left are still a
# majority of its set, where the first set alone would have lost its lease.
token_of() { # the token of a fresh grant on host 1
  local t
  t=$(cli 1 lease acquire lan/outlives --wait 30s 2>"$WORK/lease.err") || return 1
  cli 1 lease release lan/outlives >/dev/null 2>&1
  echo "$t"
}
set_size() { # set_size HOST N: the lease's set, as HOST keeps it, has N members
  cli "$1" lease ls --json 2>/dev/null | python3 -c '
import json, sys
kept = [k for k in json.load(sys.stdin)["kept"] if k["name"] == "lan/outlives" and not k["moved_on"]]
sys.exit(0 if kept and kept[0]["members"] == int(sys.argv[1]) else 1)' "$2"
}
# (The name's first use needs every peer of its home to take it: tried
# again while host 1 does not know them all yet.)
FIRST=0
for _ in $(seq 30); do FIRST=$(token_of) && break; FIRST=0; sleep 1; done
[ "$FIRST" -gt 0 ] || say "# the first acquire: $(tail -2 "$WORK/lease.err")"
left=$HOSTS
for victim in 5 4 3; do
  kill -9 "$(cat "$WORK/h$victim.pid")"
  left=$((left - 1))
  if [ $left -ge 3 ]; then
    wait_for 60 set_size 1 $left || say "# the lease's set did not shrink to $left: $(cli 1 lease ls 2>&1 | tail -2)"
  fi
done
AFTER=$(token_of || echo 0)
check "a named lease outlives three of its five hosts (tokens $FIRST, then $AFTER)" test "$AFTER" -gt "$FIRST" -a "$FIRST" -gt 0

if [ $fail -gt 0 ]; then
  for i in $(seq 1 $HOSTS); do say "--- host $i log (tail)"; tail -5 "$WORK/h$i.log" || true; done
fi
say "lan: $pass passed, $fail failed"
[ $fail -eq 0 ]
