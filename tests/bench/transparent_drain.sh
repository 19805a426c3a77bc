#!/usr/bin/env bash
# Benchmark: a WebAssembly job moved whole by `shoal drain` mid-run
# (transparent snapshots, examples/jobs/stepper.c: MIB MiB of state, run
# in steps). Four peers on loopback: a submits (no slot); b, c, d have one
# slot each; the job's home is all four. The job runs once uninterrupted,
# then again, drained off its executor part way, and off the next one
# soon after. Prints:
#   - whether both runs wrote the same /out (its id) and digest;
#   - the pause each time: the longest gap between two of the job's steps
#     by the wall clock (the job measures it), and the drain command's time;
#   - the bytes the second snapshot added to the peers' stores (each
#     peer's data directory before and after the second drain): pages that
#     did not change since the first snapshot are not fetched again.
#
# Usage: tests/bench/transparent_drain.sh [SHOAL] [MIB] [STEPS]
#   defaults: target/release/shoal 64 3000
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
MIB=${2:-64}
STEPS=${3:-3000}
WORK=$(mktemp -d /tmp/shoal-bench-drain.XXXXXX)
. tests/bench/peers.sh
cleanup() {
  stop_peers
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

examples/jobs/build.sh "$WORK/wasm" >/dev/null
up a 0
up b 1 --bootstrap "$(addr_of a)"
up c 1 --bootstrap "$(addr_of a)"
up d 1 --bootstrap "$(addr_of a)"
wait_offers 3

python3 - "$SHOAL" "$WORK" "$MIB" "$STEPS" <<'PY'
import json, os, subprocess, sys, time
shoal, work, mib, steps = sys.argv[1:5]
names = {}
for n in "abcd":
    for line in open(f"{work}/{n}.out"):
        if line.startswith("peer id"):
            names[line.split()[2]] = n

def sh(*args, check=True):
    r = subprocess.run([shoal, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"shoal {' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return r

def run_args():
    return ["run", f"{work}/wasm/stepper.wasm", "--data-dir", f"{work}/a",
            "--env", f"MIB={mib}", "--env", f"STEPS={steps}"]

def status(job):
    return json.loads(sh("job", "status", job, "--json", "--data-dir", f"{work}/a").stdout)

def stored(name):
    # Bytes on disk: a file with several names (a snapshot page linked to
    # the store's copy) counts once.
    total, seen = 0, set()
    for root, _, files in os.walk(f"{work}/{name}"):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total

def drain(view):
    executor = names[view["peer"]]
    t = time.perf_counter()
    sh("drain", "--data-dir", f"{work}/{executor}")
    return executor, (time.perf_counter() - t) * 1e3

def running_on(job, not_on=()):
    # A detached job's status comes from its home: "placed" on the peer
    # that holds its tenure (it starts there at once: a slot is free).
    while True:
        v = status(job)
        if v["state"] in ("placed", "running") and v.get("peer") and names.get(v.get("peer")) not in not_on:
            return v
        if v["state"] in ("ended", "cancelled"):
            sys.exit(f"the job ended before it was drained: {v}")
        time.sleep(0.05)

t = time.perf_counter()
whole = json.loads(sh(*run_args(), "--json").stdout.strip().splitlines()[-1])
whole_s = time.perf_counter() - t
print(f"uninterrupted: {whole_s:.1f} s on {names[whole['peer']]}, output {whole['output']}", flush=True)

job = sh(*run_args(), "--detach").stdout.split()[0]
v = running_on(job)
time.sleep(whole_s / 4)
first, first_ms = drain(v)
v = running_on(job, not_on=(first,))
time.sleep(min(2.0, whole_s / 8))
before = {n: stored(n) for n in "abcd"}
second, second_ms = drain(v)
v = running_on(job, not_on=(first, second))
# The next executor has the job's home keep the snapshot it went on from
# while the job runs: counted once the home has it.
kept_by = time.perf_counter() + 10
while time.perf_counter() < kept_by:
    history = status(job).get("history", [])
    if history and max(history, key=lambda p: p["token"])["checkpoints"] >= 1:
        break
    time.sleep(0.05)
after = {n: stored(n) for n in "abcd"}
added = {n: after[n] - before[n] for n in "abcd"}
while True:
    end = status(job)
    if end["state"] in ("ended", "cancelled"):
        break
    time.sleep(0.2)
logs = sh("job", "logs", job, "--data-dir", f"{work}/a").stdout
gap = [l for l in logs.splitlines() if "longest gap" in l]
print(f"drained off {first} after {whole_s / 4:.1f} s: `shoal drain` took {first_ms:.0f} ms; "
      f"then off {second}: {second_ms:.0f} ms; ended on {names[end['peer']]} with exit {end['exit_code']}")
print(f"job's own measure: {gap[-1] if gap else '(no line)'}")
print("second snapshot, bytes added per peer: " +
      ", ".join(f"{n} {added[n] / 2**20:.1f} MiB" for n in "abcd") +
      f" (the state is {mib} MiB)")
same = end["output"] == whole["output"]
print(f"output {'identical' if same else 'DIFFERS'}: {end['output']} vs {whole['output']}")
for n in (first, second):
    for line in open(f"{work}/{n}.log", errors="replace"):
        if "paused" in line:
            print(f"  {n}: {line.strip()[-110:]}")
history = status(job).get("history", [])
for p in history:
    print(f"  grant {p['token']} on {names.get(p['peer'], p['peer'])}: checkpoints {p['checkpoints']}, {p['why']}")
print(json.dumps({"uninterrupted_s": whole_s, "drain_ms": [first_ms, second_ms],
                  "second_snapshot_added_bytes": added, "identical": same, "gap_line": gap[-1] if gap else None}))
PY
