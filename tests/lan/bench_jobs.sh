#!/usr/bin/env bash
# Benchmark: a CPU-bound job (spin, about SECONDS of work) x JOBS over three
# hosts as network namespaces on one bridge (10.79.0.0/24, created and
# removed here; nothing leaves the machine), each `shoal up --slots 2`.
# Submitted at once from host 1 (`run --detach --repeat`); the makespan is
# from the submit to the last job's end. Compared with the ideal (total
# work / slots, and total work / the machine's cores, since the three
# hosts share this machine's CPUs), and with Slurm running the same work
# natively (the program built for this machine, sbatch --array on a node
# with 6 CPUs) against shoal running it natively too.
#
# Usage: sudo tests/lan/bench_jobs.sh [SHOAL_BINARY] [JOBS] [SECONDS]
#        (defaults: target/release/shoal 60 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
JOBS=${2:-60}
SECS=${3:-2}
PREFIX=shoal-bjobs
WORK=$(mktemp -d /tmp/shoal-bjobs.XXXXXX)
cleanup() {
  for i in 1 2 3; do
    ip netns pids "$PREFIX-h$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$PREFIX-h$i" 2>/dev/null || true
  done
  ip netns del "$PREFIX-sw" 2>/dev/null || true
  tests/bench/slurm.sh stop
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "error: needs root (network namespaces)" >&2; exit 1; }
examples/jobs/build.sh "$WORK/wasm" >/dev/null
clang -O2 -o "$WORK/spin-native" examples/jobs/spin.c

ip netns add "$PREFIX-sw"
ip -n "$PREFIX-sw" link add br0 type bridge
ip -n "$PREFIX-sw" link set br0 up
for i in 1 2 3; do
  ns="$PREFIX-h$i"
  ip netns add "$ns"
  ip link add "jh$i" netns "$ns" type veth peer name "jp$i" netns "$PREFIX-sw"
  ip -n "$PREFIX-sw" link set "jp$i" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.79.0.$i/24" dev "jh$i"
  ip -n "$ns" link set "jh$i" up
done
cli() { local i=$1; shift; ip netns exec "$PREFIX-h$i" "$SHOAL" "$@" --data-dir "$WORK/h$i"; }
for i in 1 2 3; do
  mkdir -p "$WORK/h$i"
  extra=()
  if [ "$i" -gt 1 ]; then
    A_ID=$(awk '/^peer id/ {print $3}' "$WORK/h1.out")
    extra=(--bootstrap "$(grep -m1 'listening on' "$WORK/h1.out" | awk '{print $3}')" --allow-native --trust "$A_ID")
  else
    # Host 1's own id is known after its first start: it trusts itself
    # through a second start below.
    :
  fi
  ip netns exec "$PREFIX-h$i" "$SHOAL" up --no-mdns --data-dir "$WORK/h$i" --slots 2 \
    --listen "/ip4/10.79.0.$i/tcp/0" "${extra[@]}" >"$WORK/h$i.out" 2>"$WORK/h$i.log" &
  disown
  for _ in $(seq 100); do grep -q ready "$WORK/h$i.out" 2>/dev/null && break; sleep 0.1; done
done
# Host 1 again, now trusting itself for the native round.
A_ID=$(awk '/^peer id/ {print $3}' "$WORK/h1.out")
cli 1 down >/dev/null
sleep 1
ip netns exec "$PREFIX-h1" "$SHOAL" up --no-mdns --data-dir "$WORK/h1" --slots 2 --allow-native --trust "$A_ID" \
  --listen "/ip4/10.79.0.1/tcp/0" --bootstrap "$(grep -m1 'listening on' "$WORK/h2.out" | awk '{print $3}')" \
  >"$WORK/h1.out" 2>"$WORK/h1.log" &
disown
for _ in $(seq 100); do grep -q ready "$WORK/h1.out" 2>/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do [ "$(cli 1 slots --json | grep -o '"peer"' | wc -l)" = 3 ] && break; sleep 0.2; done
cli 1 slots

python3 - "$SHOAL" "$WORK" "$PREFIX" "$JOBS" "$SECS" <<'PY'
import json, os, subprocess, sys, time
shoal, work, prefix, jobs, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
cores = os.cpu_count()
env = dict(os.environ, SHOAL_TIMEOUT="3600")
def cli(*args):
    # The data directory before the job's own arguments (after `--`).
    return subprocess.run(["ip", "netns", "exec", f"{prefix}-h1", shoal, args[0], "--data-dir", f"{work}/h1", *args[1:]],
                          capture_output=True, text=True, env=env, check=True).stdout

def one(argv):
    t = time.perf_counter(); subprocess.run(argv, check=True, stdout=subprocess.DEVNULL); return time.perf_counter() - t

def makespan(name, args):
    before = len([j for j in json.loads(cli("jobs", "--json", "--limit", "100000"))])
    t = time.perf_counter()
    ids = cli("run", "--detach", "--repeat", str(jobs), *args).split()
    while True:
        views = [j for j in json.loads(cli("jobs", "--json", "--limit", "100000")) if j["job_id"] in set(ids)]
        if len(views) == jobs and all(j["state"] == "ended" for j in views):
            break
        time.sleep(0.2)
    span = time.perf_counter() - t
    bad = [j for j in views if j["exit_code"] != 0]
    per_peer = {}
    for j in views:
        per_peer[j["peer"][-6:]] = per_peer.get(j["peer"][-6:], 0) + 1
    print(f"{name:<40} makespan {span:6.1f} s  (failed {len(bad)}; per host {sorted(per_peer.values())})", flush=True)
    return span

wasm1 = one(["ip", "netns", "exec", f"{prefix}-h1", shoal, "run", f"{work}/wasm/spin.wasm", "--data-dir", f"{work}/h1", "--", secs])
native1 = one([f"{work}/spin-native", secs])
print(f"one job alone: spin.wasm {wasm1:.2f} s through shoal; spin native {native1:.2f} s (plain)")
print(f"ideal makespans for {jobs} jobs: wasm {jobs*wasm1/6:.1f} s by 6 slots, {jobs*wasm1/cores:.1f} s by {cores} cores; "
      f"native {jobs*native1/6:.1f} s by slots, {jobs*native1/cores:.1f} s by cores")
w = makespan(f"shoal: spin.wasm x{jobs}", [f"{work}/wasm/spin.wasm", "--", secs])
n = makespan(f"shoal: spin native x{jobs}", ["--native", "--", f"{work}/spin-native", secs])
subprocess.run(["tests/bench/slurm.sh", "start", "6"], check=True, stdout=subprocess.DEVNULL)
t = time.perf_counter()
subprocess.run(["sbatch", "-Q", f"--array=0-{jobs-1}", "-o", "/dev/null", "--wrap", f"{work}/spin-native {secs}"], check=True)
while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
    time.sleep(0.2)
s = time.perf_counter() - t
print(f"{'slurm: spin native x%d (sbatch --array)' % jobs:<40} makespan {s:6.1f} s", flush=True)
print(json.dumps({"jobs": jobs, "one_wasm_s": wasm1, "one_native_s": native1, "cores": cores,
                  "makespan_wasm_s": w, "makespan_native_s": n, "makespan_slurm_s": s}))
PY
