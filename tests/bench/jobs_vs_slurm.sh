#!/usr/bin/env bash
# Side by side on this machine, in one run: Slurm (slurmctld + one slurmd
# with 6 CPUs, tests/bench/slurm.sh) against a 3-peer shoal swarm on
# loopback with 2 slots each.
#
#   latency of one tiny job, p50/p99 over RUNS runs:
#     srun /bin/true | shoal run --native -- /bin/true | shoal run hello.wasm
#   throughput of BATCH tiny jobs until all have finished:
#     sbatch --array (one submit) | shoal run --detach --repeat (one submit)
#     and INDIVIDUAL separate submissions of each (sbatch --wrap | shoal run --detach)
#
# Usage (root; release binary): tests/bench/jobs_vs_slurm.sh [SHOAL] [RUNS] [BATCH] [INDIVIDUAL]
#   defaults: target/release/shoal 200 10000 1000
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
RUNS=${2:-200}
BATCH=${3:-10000}
INDIVIDUAL=${4:-1000}
WORK=$(mktemp -d /tmp/shoal-bench-jobs.XXXXXX)
. tests/bench/peers.sh
cleanup() {
  stop_peers
  tests/bench/slurm.sh stop
}
trap cleanup EXIT

examples/jobs/build.sh "$WORK/wasm" >/dev/null
tests/bench/slurm.sh start 6

up a 2
A_ID=$(id_of a)
A_ADDR=$(addr_of a)
# b and c run native commands for a (the submitter).
up b 2 --bootstrap "$A_ADDR" --allow-native --trust "$A_ID"
up c 2 --bootstrap "$A_ADDR" --allow-native --trust "$A_ID"
wait_offers 3
"$SHOAL" slots --data-dir "$WORK/a"

python3 - "$SHOAL" "$WORK" "$RUNS" "$BATCH" "$INDIVIDUAL" <<'PY'
import json, os, subprocess, sys, time
shoal, work, runs, batch, individual = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
a = ["--data-dir", f"{work}/a"]
env = dict(os.environ, SHOAL_TIMEOUT="3600")

def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]

def latency(name, argv):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            sys.exit(f"{name} failed: {r.stderr.decode()}")
    print(f"latency  {name:<36} p50 {q(times, .5):7.1f} ms   p99 {q(times, .99):7.1f} ms   (n={runs})", flush=True)
    return q(times, .5), q(times, .99)

def slurm_drained():
    return subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""

def wait(done, poll=0.2):
    while not done():
        time.sleep(poll)

def throughput(name, submit, done, n):
    t = time.perf_counter()
    submit()
    submitted = time.perf_counter() - t
    wait(done)
    total = time.perf_counter() - t
    print(f"batch    {name:<36} {n} jobs: submitted in {submitted:6.1f} s, all finished in {total:6.1f} s = {n / total:7.0f} jobs/s", flush=True)
    return n / total

def stages(name, argv):
    """Where one job's time goes: `run --json` gives the job's own times
    (ms since the epoch, from the submitter's and executor's clocks, which
    are the same clock here); the CLI's start and exit are timed around."""
    spans = {k: [] for k in ("cli start -> queued", "queued -> placed", "placed -> started", "started -> ended", "ended -> cli exit")}
    for _ in range(runs):
        t0 = time.time() * 1000
        r = subprocess.run(argv[:2] + ["--json"] + argv[2:], capture_output=True, text=True, env=env)
        t1 = time.time() * 1000
        if r.returncode != 0:
            sys.exit(f"{name} failed: {r.stderr}")
        j = json.loads(r.stdout)
        for k, v in zip(spans, (j["queued"] - t0, j["placed"] - j["queued"], j["started"] - j["placed"], j["ended"] - j["started"], t1 - j["ended"])):
            spans[k].append(v)
    print(f"stages   {name}: " + ", ".join(f"{k} {q(v, .5):.1f}" for k, v in spans.items()) + " ms (p50)", flush=True)

lat = {}
lat["srun"] = latency("srun /bin/true", ["srun", "/bin/true"])
# The floor of any shoal command: the process, control.json, one call.
lat["status"] = latency("shoal status (the CLI's floor)", [shoal, "status"] + a)
lat["native"] = latency("shoal run --native -- /bin/true", [shoal, "run", "--native"] + a + ["--", "/bin/true"])
stages("shoal run --native -- /bin/true", [shoal, "run", "--native"] + a + ["--", "/bin/true"])
lat["wasm"] = latency("shoal run hello.wasm", [shoal, "run", f"{work}/wasm/hello.wasm"] + a)

def count_shoal():
    jobs = json.loads(subprocess.run([shoal, "jobs", "--json", "--limit", "200000"] + a, capture_output=True, text=True, env=env).stdout)
    return sum(1 for j in jobs if j["state"] in ("ended", "cancelled"))

tp = {}
# shoal first, then Slurm: Slurm's rate is bounded by its scheduler, not by
# the CPU, so whatever runs on the machine after shoal's part matters less.
base = count_shoal()
tp["shoal repeat"] = throughput("shoal run --detach --repeat (native)",
    lambda: subprocess.run([shoal, "run", "--native", "--detach", "--repeat", str(batch)] + a + ["--", "/bin/true"], check=True, stdout=subprocess.DEVNULL, env=env),
    lambda: count_shoal() >= base + batch, batch)
base = count_shoal()
tp["shoal each"] = throughput(f"shoal run --detach x{individual}",
    lambda: [subprocess.run([shoal, "run", "--native", "--detach"] + a + ["--", "/bin/true"], check=True, stdout=subprocess.DEVNULL, env=env) for _ in range(individual)],
    lambda: count_shoal() >= base + individual, individual)
tp["sbatch array"] = throughput("sbatch --array --wrap /bin/true",
    lambda: subprocess.run(["sbatch", "-Q", f"--array=0-{batch - 1}", "-o", "/dev/null", "--wrap", "/bin/true"], check=True), slurm_drained, batch)
tp["sbatch each"] = throughput(f"sbatch --wrap /bin/true x{individual}",
    lambda: [subprocess.run(["sbatch", "-Q", "-o", "/dev/null", "--wrap", "/bin/true"], check=True) for _ in range(individual)], slurm_drained, individual)
print(json.dumps({"latency_ms": lat, "jobs_per_s": tp}))
PY
