"""Peer baseline for benches/throughput.rs: Python's multiprocessing.Pool.

Run: python3 benches/peer_pool.py  (BENCH_MAP_N sets the map size, default 1,000,000)
Prints the same JSON lines as the Rust bench, with "peer": "multiprocessing.Pool".
"""
import json
import os
import time
from multiprocessing import Pool


def f(x):
    return x * 2


def echo(x):
    return x


def main():
    n = int(os.environ.get("BENCH_MAP_N", "1000000"))
    with Pool(2) as pool:
        pool.map(f, range(1000), chunksize=64)
        start = time.perf_counter()
        out = pool.map(f, range(n), chunksize=1024)
        seconds = time.perf_counter() - start
        assert out[-1] == (n - 1) * 2
        print(json.dumps({"bench": "local_map_trivial", "peer": "multiprocessing.Pool", "n": n,
                          "containers": 2, "seconds": round(seconds, 3),
                          "per_sec": round(n / seconds)}))
        for i in range(100):
            pool.apply(echo, (i,))
        times = []
        for i in range(2000):
            t = time.perf_counter()
            pool.apply(echo, (i,))
            times.append(time.perf_counter() - t)
        times.sort()
        pick = lambda p: round(times[round((len(times) - 1) * p)] * 1e6)
        print(json.dumps({"bench": "local_call_roundtrip", "peer": "multiprocessing.Pool",
                          "n": len(times), "p50_us": pick(0.5), "p99_us": pick(0.99)}))
    start = time.perf_counter()
    with Pool(1) as pool:
        pool.apply(f, (1,))
        ms = (time.perf_counter() - start) * 1000
    print(json.dumps({"bench": "local_cold_start", "peer": "multiprocessing.Pool", "ms": round(ms, 1)}))


if __name__ == "__main__":
    main()
