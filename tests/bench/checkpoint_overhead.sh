#!/usr/bin/env bash
# Benchmark: what checkpoints cost a job. examples/jobs/state.c keeps MIB
# MiB of state and makes PASSES passes over it; run once without
# checkpoints and once checkpointing every EVERY seconds (it writes
# /ckpt/state and exits 85; the executor saves /ckpt as a blob, a majority
# of the job's home fetches and keeps it, and the job runs again from it).
# Three peers on loopback, one slot each; the job's home is all three.
# Prints both times, the checkpoints taken, the overhead (goal: at most 5%
# for 100 MiB every 60 s) and whether both runs ended with the same digest.
#
# Usage: tests/bench/checkpoint_overhead.sh [SHOAL] [MIB] [PASSES] [EVERY]
#   defaults: target/release/shoal 100 12000 60
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
MIB=${2:-100}
PASSES=${3:-12000}
EVERY=${4:-60}
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

python3 - "$SHOAL" "$WORK" "$MIB" "$PASSES" "$EVERY" <<'PY'
import json, os, subprocess, sys, time
shoal, work, mib, passes, every = sys.argv[1:6]
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

plain = run("without checkpoints", "0")
saved = run(f"checkpoint every {every} s ({mib} MiB)", every)
overhead = (saved[0] - plain[0]) / plain[0] * 100
print(f"overhead {overhead:+.1f}% for {saved[1]} checkpoints of {mib} MiB (goal <= 5%); "
      f"digests {'identical' if plain[2] == saved[2] else 'DIFFER'}")
print(json.dumps({"plain_s": plain[0], "checkpointed_s": saved[0], "checkpoints": saved[1],
                  "overhead_pct": overhead, "identical": plain[2] == saved[2]}))
PY
