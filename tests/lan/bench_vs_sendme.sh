#!/usr/bin/env bash
# Benchmark: one file between two peers over loopback, side by side in one
# run: shoal (TCP), iroh's sendme, and curl from a plain HTTP server as the
# ceiling. Everything runs inside a network namespace that has only `lo`, so
# nothing (sendme's relay and discovery servers included) can be reached
# outside the machine.
#
# Usage: sudo tests/lan/bench_vs_sendme.sh [MIB] [SHOAL] [SENDME]
#        (defaults: 1024, target/release/shoal, sendme on PATH or /work/tools/bin/sendme)
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${1:-1024}
SHOAL=${2:-target/release/shoal}
SENDME=${3:-$(command -v sendme || echo /work/tools/bin/sendme)}
NS=shoal-lo-bench
WORK=$(mktemp -d /tmp/shoal-vs.XXXXXX)
. tests/lan/lo_pair.sh
lo_namespace
for b in "$SHOAL" "$SENDME"; do [ -x "$b" ] || { echo "error: no binary at $b" >&2; exit 1; }; done
now() { date +%s.%N; }
rate() { echo "$MIB / ($2 - $1)" | bc -l; }

head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$WORK/file.bin"
echo "# $MIB MiB over loopback, in a namespace with only lo"

# shoal: two daemons, share on one, get on the other by ticket.
lo_pair "$SHOAL"
t0=$(now)
TICKET=$(run "$SHOAL" share "$WORK/file.bin" --json --data-dir "$WORK/a" | grep -o '"ticket":"[a-z0-9]*"' | cut -d'"' -f4)
t1=$(now)
run "$SHOAL" get "$TICKET" -o "$WORK/shoal.got" --data-dir "$WORK/b" >/dev/null
t2=$(now)
cmp -s "$WORK/file.bin" "$WORK/shoal.got" || { echo "error: shoal's copy differs" >&2; exit 1; }
printf 'shoal   share %5.2f s | get %5.2f s  %6.1f MiB/s\n' "$(echo "$t1 - $t0" | bc -l)" "$(echo "$t2 - $t1" | bc -l)" "$(rate "$t1" "$t2")"

# sendme: send prints a ticket once the file is imported; receive exports
# the file into its working directory.
mkdir -p "$WORK/sendme-send" "$WORK/sendme-recv"
cp "$WORK/file.bin" "$WORK/sendme-send/file.bin"
t0=$(now)
(cd "$WORK/sendme-send" && run "$SENDME" send file.bin --relay disabled --ticket-type addresses --no-progress \
  >"$WORK/sendme.out" 2>"$WORK/sendme.err" &)
for _ in $(seq 600); do grep -q 'blob' "$WORK/sendme.out" 2>/dev/null && break; sleep 0.1; done
t1=$(now)
STICKET=$(grep -o 'blob[a-z0-9]*' "$WORK/sendme.out" | head -1)
[ -n "$STICKET" ] || { echo "error: sendme printed no ticket" >&2; cat "$WORK/sendme.err" >&2; exit 1; }
(cd "$WORK/sendme-recv" && run "$SENDME" receive "$STICKET" --relay disabled --no-progress >/dev/null 2>"$WORK/sendme-recv.err")
t2=$(now)
cmp -s "$WORK/file.bin" "$WORK/sendme-recv/file.bin" || { echo "error: sendme's copy differs" >&2; exit 1; }
printf 'sendme  send  %5.2f s | receive %5.2f s  %6.1f MiB/s\n' "$(echo "$t1 - $t0" | bc -l)" "$(echo "$t2 - $t1" | bc -l)" "$(rate "$t1" "$t2")"

# The ceiling: curl from python's HTTP server, no encryption, no hashing.
(cd "$WORK" && run python3 -m http.server 18080 --bind 127.0.0.1 >/dev/null 2>&1 &)
for _ in $(seq 50); do run curl -s -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done
t1=$(now)
run curl -s -o "$WORK/curl.got" http://127.0.0.1:18080/file.bin
t2=$(now)
cmp -s "$WORK/file.bin" "$WORK/curl.got" || { echo "error: curl's copy differs" >&2; exit 1; }
printf 'curl    (plain HTTP)          %5.2f s  %6.1f MiB/s\n' "$(echo "$t2 - $t1" | bc -l)" "$(rate "$t1" "$t2")"
