# Sourced by the loopback benchmarks: a network namespace that has only
# `lo`, and two shoal daemons in it. The caller sets NS (the namespace's
# name) and WORK (a scratch directory); this removes both on exit.
# shellcheck shell=bash

lo_cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}

# lo_namespace: needs root; creates $NS with lo up and sets the EXIT trap.
lo_namespace() {
  trap lo_cleanup EXIT
  [ "$(id -u)" = 0 ] || { echo "error: needs root (a network namespace)" >&2; exit 1; }
  ip netns add "$NS"
  ip -n "$NS" link set lo up
}

run() { ip netns exec "$NS" "$@"; }

# lo_pair SHOAL: daemon a, then daemon b bootstrapped from a, with data in
# $WORK/a and $WORK/b; returns once both print `ready`.
lo_pair() {
  local shoal=$1 i boot
  for i in a b; do
    mkdir -p "$WORK/$i"
    boot=()
    [ "$i" = b ] && boot=(--bootstrap "$(grep -m1 'listening on' "$WORK/a.out" | awk '{print $3}')")
    run "$shoal" up --no-mdns --data-dir "$WORK/$i" --listen /ip4/127.0.0.1/tcp/0 "${boot[@]}" \
      >"$WORK/$i.out" 2>"$WORK/$i.log" &
    disown
    for _ in $(seq 100); do grep -q ready "$WORK/$i.out" 2>/dev/null && break; sleep 0.1; done
  done
}
