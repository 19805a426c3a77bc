#!/usr/bin/env bash
# Where a transfer's CPU goes: one `get` of a MIB-sized file between two
# daemons in a network namespace that has only `lo`, printing the wall
# time and the CPU seconds each daemon spent on it (from /proc/PID/stat).
# With PERF=sender or PERF=receiver, also records that daemon with
# `perf record -g` into perf-<side>.data in the current directory.
#
# Usage: sudo [PERF=receiver] tests/lan/cpu_of_get.sh [SHOAL] [MIB]
#        (defaults: target/release/shoal, 1024)
set -euo pipefail
SHOAL=$(realpath "${1:-target/release/shoal}")
MIB=${2:-1024}
OUT=$PWD
NS=shoal-cpu-get
WORK=$(mktemp -d /tmp/shoal-cpu.XXXXXX)
. "$(dirname "$0")/lo_pair.sh"
lo_namespace
[ -x "$SHOAL" ] || { echo "error: no binary at $SHOAL" >&2; exit 1; }
head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$WORK/file.bin"
lo_pair "$SHOAL"
TICKET=$(run "$SHOAL" share "$WORK/file.bin" --json --data-dir "$WORK/a" | grep -o '"ticket":"[a-z0-9]*"' | cut -d'"' -f4)
sender=$(pgrep -f "data-dir $WORK/a --listen")
receiver=$(pgrep -f "data-dir $WORK/b --listen")
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
perf_pid=
case "${PERF:-}" in
  sender) perf record -g -p "$sender" -o "$OUT/perf-sender.data" 2>/dev/null & perf_pid=$! ;;
  receiver) perf record -g -p "$receiver" -o "$OUT/perf-receiver.data" 2>/dev/null & perf_pid=$! ;;
esac
[ -n "$perf_pid" ] && sleep 0.3
s0=$(cpu "$sender") r0=$(cpu "$receiver") t0=$(date +%s.%N)
run "$SHOAL" get "$TICKET" -o "$WORK/got" --data-dir "$WORK/b" >/dev/null
t1=$(date +%s.%N) s1=$(cpu "$sender") r1=$(cpu "$receiver")
[ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
cmp -s "$WORK/file.bin" "$WORK/got" || { echo "error: the copy differs" >&2; exit 1; }
tck=$(getconf CLK_TCK)
printf 'wall %.2f s | sender %.2f CPU-s | receiver %.2f CPU-s\n' \
  "$(echo "$t1 - $t0" | bc -l)" "$(echo "($s1 - $s0) / $tck" | bc -l)" "$(echo "($r1 - $r0) / $tck" | bc -l)"
