#!/usr/bin/env bash
# Benchmark: what checkpoints cost a job. examples/jobs/state.c keeps MIB
# MiB of state and makes PASSES passes over it; run once without
# checkpoints and once checkpointing every EVERY seconds (it writes
# /ckpt/state and exits 85; the executor saves /ckpt as a blob, a majority
# of the job's home fetches and keeps it, and the job runs again from it).
# Three peers on loopback, one slot each; the job's home is all three.
# The two alternate ROUNDS times (plain, checkpointed, plain, ...), so that
# a slow spell of this shared machine falls on both. Prints every time, the
# checkpoints taken, the overhead of the medians (goal: at most 5% for
# 100 MiB every 60 s) and whether every run ended with the same digest.
#
# Usage: tests/bench/checkpoint_overhead.sh [SHOAL] [MIB] [PASSES] [EVERY] [ROUNDS]
#   defaults: target/release/shoal 100 12000 60 1
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
MIB=${2:-100}
PASSES=${3:-12000}
EVERY=${4:-60}
ROUNDS=${5:-1}
WORK=$(mktemp -d /tmp/shoal-bench-ckpt.XXXXXX)
. tests/bench/peers.sh
cleanup() {
  stop_peers
  rm -rf "$WORK"
}
trap cleanup EXIT

examples/jobs/build.sh "$WORK/wasm" >/dev/null
up a 1
up b 1 --bootstrap "$(addr_of a)"
up c 1 --bootstrap "$(addr_of a)"
wait_offers 3

python3 - "$SHOAL" "$WORK" "$MIB" "$PASSES" "$EVERY" "$ROUNDS" <<'PY'
import json, os, statistics, subprocess, sys, time
shoal, work, mib, passes, every, rounds = sys.argv[1:7]
env = dict(os.environ, SHOAL_TIMEOUT="7200")

def run(label, every):
    t = time.perf_counter()
    r = subprocess.run([shoal, "run", f"{work}/wasm/state.wasm", "--data-dir", f"{work}/a",
                        "--timeout", "2h", "--", mib, passes, every],
                       capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{label}: exit {r.returncode}: {r.stderr}")
    lines = r.stdout.strip().splitlines()
    checkpoints = sum(1 for l in lines if l.startswith("checkpoint after pass"))
    digest = lines[-1].split()[0]
    print(f"{label:<34} {took:8.1f} s   checkpoints {checkpoints:3d}   digest {digest}", flush=True)
    return took, checkpoints, digest

plains, saveds = [], []
for _ in range(int(rounds)):
    plains.append(run("without checkpoints", "0"))
    saveds.append(run(f"checkpoint every {every} s ({mib} MiB)", every))
plain = statistics.median(p[0] for p in plains)
saved = statistics.median(s[0] for s in saveds)
overhead = (saved - plain) / plain * 100
digests = {r[2] for r in plains + saveds}
checkpoints = [s[1] for s in saveds]
print(f"medians of {rounds}: {plain:.1f} s without, {saved:.1f} s with; overhead {overhead:+.1f}% for "
      f"{checkpoints} checkpoints of {mib} MiB (goal <= 5%); digests {'identical' if len(digests) == 1 else 'DIFFER'}")
print(json.dumps({"plain_s": [p[0] for p in plains], "checkpointed_s": [s[0] for s in saveds],
                  "checkpoints": checkpoints, "overhead_pct": overhead, "identical": len(digests) == 1}))
PY
