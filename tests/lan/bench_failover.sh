#!/usr/bin/env bash
# Benchmark: a job outlives its executor. Five hosts as network namespaces
# on one bridge (10.80.0.0/24, created and removed here; nothing leaves the
# machine): host 1 submits (no slots), hosts 2-5 offer one slot each; all
# five are the job's home. The job is examples/jobs/steps.c: STEPS steps
# of arithmetic, checkpointing itself after each (exit 85).
#
#   kill:  kill -9 the executor's peer part way through; the time from the
#          kill until the job runs again on another host (goal: at most
#          the lease term, 10 s, + 2 s), p50/p99 over TRIES tries; every
#          output byte-identical to an uninterrupted run's.
#   cut:   the executor's link cut instead: how long until the cut-off
#          executor stops the job by its own clock (at most the term), the
#          time until it runs again elsewhere, and after the link heals
#          exactly one result (the new executor's) at the job's home.
#   leave: the submitter stops right after `run --detach`; the job ends
#          and its output is fetched from another host.
#
# Usage: sudo tests/lan/bench_failover.sh [SHOAL_BINARY] [TRIES] [STEPS] [ROUNDS]
#        (defaults: target/release/shoal 20 40 150000000)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHOAL=$(realpath "${1:-target/release/shoal}")
TRIES=${2:-20}
STEPS=${3:-40}
ROUNDS=${4:-150000000}
PREFIX=shoal-fo
HOSTS=5
WORK=$(mktemp -d /tmp/shoal-fo.XXXXXX)
cleanup() {
  for i in $(seq $HOSTS); do
    ip netns pids "$PREFIX-h$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$PREFIX-h$i" 2>/dev/null || true
  done
  ip netns del "$PREFIX-sw" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "error: needs root (network namespaces)" >&2; exit 1; }
examples/jobs/build.sh "$WORK/wasm" >/dev/null

ip netns add "$PREFIX-sw"
ip -n "$PREFIX-sw" link add br0 type bridge
ip -n "$PREFIX-sw" link set br0 up
for i in $(seq $HOSTS); do
  ns="$PREFIX-h$i"
  ip netns add "$ns"
  ip link add "fh$i" netns "$ns" type veth peer name "fp$i" netns "$PREFIX-sw"
  ip -n "$PREFIX-sw" link set "fp$i" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "10.80.0.$i/24" dev "fh$i"
  ip -n "$ns" link set "fh$i" up
done

# up I: starts host I's peer (again, after a kill: same data directory).
up() {
  local i=$1 slots=1 boot=()
  [ "$i" = 1 ] && slots=0
  [ "$i" -gt 1 ] && boot=(--bootstrap "$(grep -m1 'listening on' "$WORK/h1.out" | awk '{print $3}')")
  mkdir -p "$WORK/h$i"
  ip netns exec "$PREFIX-h$i" "$SHOAL" up --no-mdns --data-dir "$WORK/h$i" --slots "$slots" \
    --listen "/ip4/10.80.0.$i/tcp/4001" "${boot[@]}" >"$WORK/h$i.out" 2>>"$WORK/h$i.log" &
  echo $! >"$WORK/h$i.pid"
  disown
  for _ in $(seq 100); do grep -q '^ready' "$WORK/h$i.out" 2>/dev/null && return; sleep 0.1; done
  echo "host $i did not start" >&2; exit 1
}
for i in $(seq $HOSTS); do up "$i"; done
for i in $(seq $HOSTS); do awk -v h="$i" '/^peer id/ {print h, $3}' "$WORK/h$i.out"; done >"$WORK/peers"
for _ in $(seq 150); do
  [ "$(ip netns exec "$PREFIX-h1" "$SHOAL" slots --json --data-dir "$WORK/h1" | grep -o '"peer"' | wc -l)" = 4 ] && break
  sleep 0.2
done
ip netns exec "$PREFIX-h1" "$SHOAL" slots --data-dir "$WORK/h1"

if [ -n "${HOLD:-}" ]; then echo "$WORK"; sleep "$HOLD"; exit 0; fi  # to look around by hand

python3 - "$SHOAL" "$WORK" "$PREFIX" "$TRIES" "$STEPS" "$ROUNDS" <<'PY'
import json, os, subprocess, sys, time
shoal, work, prefix, tries, steps, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
env = dict(os.environ, SHOAL_TIMEOUT="120")
host_of = {}
for line in open(f"{work}/peers"):
    h, peer = line.split()
    host_of[peer] = int(h)
TERM = 10.0

def cli(h, *args, check=True):
    # The data directory before the job's own arguments (after `--`).
    args = list(args)
    at = args.index("--") if "--" in args else len(args)
    args[at:at] = ["--data-dir", f"{work}/h{h}"]
    r = subprocess.run(["ip", "netns", "exec", f"{prefix}-h{h}", shoal, *args], capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"host {h}: shoal {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout

def status(job, h=1):
    try:
        return json.loads(cli(h, "job", "status", job, "--json"))
    except (RuntimeError, json.JSONDecodeError):
        return None

def until(what, cond, within=300, every=0.05):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out: {what}")

def submit(h=1):
    return cli(h, "run", "--detach", f"{work}/wasm/steps.wasm", "--", steps, rounds, "1").strip()

def output_of(view, h=1):
    d = f"{work}/got-{view['job_id'][:12]}-{h}"
    cli(h, "get", view["output"], "-o", d)
    return open(f"{d}/digest.txt", "rb").read()

def wait_end(job, h=1):
    return until(f"job {job[:12]} ends", lambda: (lambda v: v if v and v["state"] == "ended" else None)(status(job, h)), every=0.2)

def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]

def up(h):
    subprocess.run(["bash", "-c", f"""
      ip netns exec {prefix}-h{h} {shoal} up --no-mdns --data-dir {work}/h{h} --slots 1 \
        --listen /ip4/10.80.0.{h}/tcp/4001 --bootstrap $(grep -m1 'listening on' {work}/h1.out | awk '{{print $3}}') \
        >{work}/h{h}.out 2>>{work}/h{h}.log & echo $! >{work}/h{h}.pid; disown"""], check=True)
    until(f"host {h} is up again", lambda: "ready" in open(f"{work}/h{h}.out").read(), within=30, every=0.1)
    until(f"host {h} offers its slot again",
          lambda: len(json.loads(cli(1, "slots", "--json"))) == 4, within=60, every=0.2)

# The reference: one run without interruption.
t = time.monotonic()
ref_job = submit()
ref = wait_end(ref_job)
reference = output_of(ref)
alone = time.monotonic() - t
print(f"uninterrupted: {reference.decode().strip()} in {alone:.1f} s (exit {ref['exit_code']})", flush=True)

def running(job, grant=1):
    """The job's status once grant `grant` or a later one runs (its
    executor says so) or has ended."""
    v = status(job)
    if not v or not v["peer"] or (v["token"] or 0) < grant:
        return None
    if v["state"] == "ended":
        return v
    try:
        here = json.loads(cli(host_of[v["peer"]], "jobs", "--json"))
    except (RuntimeError, KeyError, json.JSONDecodeError):
        return None
    mine = next((x for x in here if x["job_id"] == job and x["token"] == v["token"]), None)
    return v if mine and mine["state"] in ("running", "ended") else None

def kill_try(i):
    job = submit()
    first = until("the job runs", lambda: running(job))
    victim = host_of[first["peer"]]
    time.sleep(float(os.environ.get("KILL_AFTER", "3")))
    pid = open(f"{work}/h{victim}.pid").read().strip()
    t_kill = time.monotonic()
    subprocess.run(["kill", "-9", pid])
    again = until("the job runs again elsewhere", lambda: running(job, first["token"] + 1), every=0.02)
    back = time.monotonic() - t_kill
    if back > TERM + 2:
        # A slow try keeps its peers' logs for a look afterwards.
        keep = f"/tmp/shoal-fo-slow-{os.getpid()}-{i + 1}"
        os.makedirs(keep, exist_ok=True)
        for h in range(1, 6):
            subprocess.run(["cp", f"{work}/h{h}.log", f"{keep}/h{h}.log"])
        print(f"  (slow: the peers' logs are kept in {keep}; job {job}, killed host {victim})", flush=True)
    end = wait_end(job)
    same = output_of(end) == reference
    print(f"kill {i + 1:2}: host {victim} killed; running again on host {host_of.get(again['peer'], '?')} after {back:5.2f} s; "
          f"output {'identical' if same else 'DIFFERENT'} (grant {end['token']})", flush=True)
    up(victim)
    return back, same

def cut_try():
    job = submit()
    first = until("the job runs", lambda: running(job))
    victim = host_of[first["peer"]]
    time.sleep(3)
    t_cut = time.monotonic()
    subprocess.run(["ip", "-n", f"{prefix}-h{victim}", "link", "set", f"fh{victim}", "down"], check=True)
    def stopped_there():
        views = json.loads(cli(victim, "jobs", "--json"))
        return next((v for v in views if v["job_id"] == job and v["state"] in ("lost", "ended")), None)
    stop = until("the cut-off executor stops the job", stopped_there, every=0.05)
    stopped = time.monotonic() - t_cut
    again = until("the job runs again elsewhere", lambda: running(job, first["token"] + 1), every=0.05)
    back = time.monotonic() - t_cut
    end = wait_end(job)
    subprocess.run(["ip", "-n", f"{prefix}-h{victim}", "link", "set", f"fh{victim}", "up"], check=True)
    time.sleep(TERM + 5)
    seen = {h: status(job, h) for h in (1, victim, 3 if victim != 3 else 4)}
    results = {(v["token"], v["output"], v["exit_code"]) for v in seen.values() if v and v["state"] == "ended"}
    same = output_of(end) == reference
    print(f"cut: host {victim}'s link cut; it stopped the job after {stopped:.2f} s ({stop['state']}: {stop.get('error')}); "
          f"running again on host {host_of.get(again['peer'], '?')} after {back:.2f} s; after the heal the home holds "
          f"{len(results)} result(s): {sorted(results)}; output {'identical' if same else 'DIFFERENT'}", flush=True)
    return stopped, back, len(results), same

def leave_try():
    job = submit()
    cli(1, "down")
    end = wait_end(job, h=2)
    same = output_of(end, h=3) == reference
    print(f"leave: the submitter stopped after --detach; the job ended (exit {end['exit_code']}) on host "
          f"{host_of.get(end['peer'], '?')}; output fetched on host 3: {'identical' if same else 'DIFFERENT'}", flush=True)
    return same

kills = [kill_try(i) for i in range(tries)]
backs = [b for b, _ in kills]
print(f"kill -9: running again after p50 {q(backs, .5):.2f} s, p99 {q(backs, .99):.2f} s, max {max(backs):.2f} s "
      f"(goal <= {TERM + 2:.0f} s); identical outputs {sum(s for _, s in kills)}/{len(kills)}", flush=True)
cut = cut_try()
left = leave_try()
print(json.dumps({"uninterrupted_s": alone, "kill_back_s": backs, "kill_identical": sum(s for _, s in kills),
                  "cut_stopped_s": cut[0], "cut_back_s": cut[1], "cut_results": cut[2], "cut_identical": cut[3],
                  "leave_identical": left}))
PY
