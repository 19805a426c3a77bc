# Loopback peers for the benchmarks; sourced, with SHOAL (the binary) and
# WORK (a scratch directory) set.
#   up NAME SLOTS [ARGS...]   starts a peer with its data under $WORK/NAME
#   addr_of NAME / id_of NAME its loopback address / peer id
#   wait_offers N             until peer a sees N slot offers
#   stop_peers                stops every peer started, and waits for them
up() {
  local name=$1 slots=$2; shift 2
  "$SHOAL" up --no-mdns --data-dir "$WORK/$name" --listen /ip4/127.0.0.1/tcp/0 --slots "$slots" "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.log" &
  echo $! >"$WORK/$name.pid"
  for _ in $(seq 100); do grep -q '^ready' "$WORK/$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "peer $name did not start" >&2; exit 1
}
addr_of() { awk '/^listening on \/ip4\/127.0.0.1\/tcp/ {print $3; exit}' "$WORK/$1.out"; }
id_of() { awk '/^peer id/ {print $3}' "$WORK/$1.out"; }
wait_offers() {
  for _ in $(seq 100); do
    [ "$("$SHOAL" slots --json --data-dir "$WORK/a" | grep -o '"peer"' | wc -l)" = "$1" ] && return
    sleep 0.2
  done
}
stop_peers() {
  local pid
  for pidfile in "$WORK"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    # The peers write as they stop: wait before their files are removed.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}
