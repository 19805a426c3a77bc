#!/usr/bin/env python3
"""A TCP echo service, and the measurement of one service reached several
ways (used by tests/bench/device_stream.sh and tests/lan/bench_device_stream.sh).

  stream_ways.py echo HOST PORT
      serves an echo on HOST:PORT until killed.
  stream_ways.py measure ROUNDS MIB WHERE NAME=HOST:PORT ...
      for each way: one connection, ROUNDS round trips of 64 bytes (p50 /
      p99 in us, and what each adds to the first way's p99); then MIB MiB
      echoed (sent and read back at once), MiB/s. Each way twice,
      interleaved, the better of each kept. WHERE names the setting in the
      first line printed.
"""
import socket
import sys
import threading
import time


def echo(host, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)

    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            c.sendall(d)
        c.close()

    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def conn(addr):
    c = socket.create_connection(addr)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def latency(addr, rounds):
    c = conn(addr)
    msg = b"x" * 64
    out = []
    for i in range(rounds + 100):
        t = time.perf_counter_ns()
        c.sendall(msg)
        got = 0
        while got < 64:
            got += len(c.recv(64 - got))
        if i >= 100:
            out.append((time.perf_counter_ns() - t) / 1e3)
    c.close()
    out.sort()
    return out[len(out) // 2], out[round((len(out) - 1) * 0.99)]


def throughput(addr, mib):
    c = conn(addr)
    total = mib << 20
    chunk = b"y" * (1 << 16)

    def send():
        left = total
        while left > 0:
            n = min(left, len(chunk))
            c.sendall(chunk[:n])
            left -= n

    t = time.perf_counter()
    th = threading.Thread(target=send)
    th.start()
    got = 0
    while got < total:
        d = c.recv(1 << 20)
        if not d:
            break
        got += len(d)
    th.join()
    s = time.perf_counter() - t
    c.close()
    return got / (1 << 20) / s


def measure(rounds, mib, where, ways):
    results = {}
    for _ in range(2):
        for name, addr in ways:
            p50, p99 = latency(addr, rounds)
            tput = throughput(addr, mib)
            best = results.get(name)
            if best is None:
                results[name] = (p50, p99, tput)
            elif p99 < best[1]:
                results[name] = (p50, p99, max(tput, best[2]))
            else:
                results[name] = (best[0], best[1], max(tput, best[2]))
    first = results[ways[0][0]]
    print(f"{rounds} round trips of 64 B; {mib} MiB echoed; {where}; best of 2 interleaved runs")
    print(f"  {'':<18} {'p50 µs':>8} {'p99 µs':>8} {'p99 added':>10} {'MiB/s':>8} {'of ' + ways[0][0]:>10}")
    for name, _ in ways:
        p50, p99, tput = results[name]
        print(f"  {name:<18} {p50:8.0f} {p99:8.0f} {p99 - first[1]:10.0f} {tput:8.0f} {tput / first[2]:10.0%}")


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2], int(sys.argv[3]))
    else:
        ways = []
        for arg in sys.argv[5:]:
            name, addr = arg.split("=", 1)
            host, port = addr.rsplit(":", 1)
            ways.append((name, (host, int(port))))
        measure(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], ways)
