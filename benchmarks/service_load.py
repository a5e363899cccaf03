"""Load on a local prediction server: N concurrent clients for T seconds, single-shape and
1,000-shape PredictGemm requests (and 1,000-shape PredictGemmColumns requests, and one client
alone for the unloaded latency). Prints QPS, p50/p99 latency, errors and predictions per
second.

The server runs in its own process (``hwnas serve`` on a free loopback port) against a store
with one registered model (trained here on synthetic roofline data, so the benchmark needs no
prior sweep); clients run in ``--procs`` processes with asyncio gRPC, ``--clients`` in all.

    python benchmarks/service_load.py [--clients 64] [--seconds 10] [--procs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def prepare_store(root: str) -> tuple[str, str]:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from pathlib import Path

    from tests.test_service import make_store

    os.environ["HWNAS_MODELS"] = os.path.join(root, "models")
    store = make_store(Path(root))
    return store.url, "Test GPU"


async def client_loop(addr: str, device: str, shapes: int, seconds: float, concurrency: int,
                      columnar: bool = False):
    import grpc

    from hwnas.rpc.v1 import predictor_pb2 as pb
    from hwnas.rpc.v1 import predictor_pb2_grpc as pb_grpc

    rng = np.random.default_rng(os.getpid())
    dims = rng.integers(16, 4096, size=(shapes, 3))
    if columnar:
        req = pb.PredictGemmColumnsRequest(device=device, shapes=pb.GemmColumns(
            m=dims[:, 0].tolist(), n=dims[:, 1].tolist(), k=dims[:, 2].tolist(),
            dtype=["fp16"]))
    else:
        req = pb.PredictGemmRequest(device=device, shapes=[
            pb.GemmShape(m=int(m), n=int(n), k=int(k), dtype="fp16") for m, n, k in dims])
    latencies, errors = [], 0
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.PredictorStub(channel)
        call = stub.PredictGemmColumns if columnar else stub.PredictGemm
        await call(req, timeout=30)  # connect and warm up
        end = time.perf_counter() + seconds

        async def one():
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = await call(req, timeout=30)
                    assert len(r.latency_ms if columnar else r.predictions) == shapes
                    latencies.append(time.perf_counter() - t0)
                except Exception:
                    errors += 1

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies, errors


async def empty_rpc_ms(addr: str, calls: int = 2000) -> float:
    """p50 (ms) of the standard health Check, one client: the cost of a gRPC round trip with
    no work in it, on this machine and Python stack."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        req = health_pb2.HealthCheckRequest()
        for _ in range(100):
            await stub.Check(req, timeout=30)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await stub.Check(req, timeout=30)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def worker(args) -> tuple[list[float], int]:
    return asyncio.run(client_loop(*args))


def run(addr, device, shapes, seconds, clients, procs, columnar: bool = False) -> None:
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(worker, [(addr, device, shapes, seconds, c, columnar) for c in per])
    wall = time.perf_counter() - t0
    lat = np.array([x for p in parts for x in p[0]]) * 1e3
    errors = sum(p[1] for p in parts)
    qps = len(lat) / seconds
    kind = "columns" if columnar else "messages"
    print(f"{shapes:>5} shape(s)/request ({kind}), {clients} clients: {qps:>7.0f} req/s, "
          f"p50 {np.percentile(lat, 50):7.2f} ms, p99 {np.percentile(lat, 99):7.2f} ms, "
          f"errors {errors}, predictions/s {qps * shapes:>10,.0f}  (wall {wall:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="hwnas-load-")
    db, device = prepare_store(root)
    from search.experiment import free_port

    port = free_port()
    env = {**os.environ, "HWNAS_DB": db}
    server = subprocess.Popen([sys.executable, "-m", "hwnas.cli", "serve", "--port", str(port),
                               "--workers", "8"], env=env, stderr=subprocess.DEVNULL)
    try:
        from hwnas.client import PredictorClient

        PredictorClient(f"127.0.0.1:{port}").wait_ready(60)
        print(f"server pid {server.pid} on 127.0.0.1:{port}; {os.cpu_count()} CPUs shared by "
              f"server and clients")
        run(f"127.0.0.1:{port}", device, 1, args.seconds, args.clients, args.procs)
        run(f"127.0.0.1:{port}", device, args.batch, args.seconds, args.clients, args.procs)
        run(f"127.0.0.1:{port}", device, args.batch, args.seconds, args.clients, args.procs,
            columnar=True)
        run(f"127.0.0.1:{port}", device, 1, args.seconds, 1, 1)
        print(f"empty RPC (grpc.health Check), 1 client: p50 "
              f"{asyncio.run(empty_rpc_ms(f'127.0.0.1:{port}')):.2f} ms (the round-trip floor "
              "of the gRPC stack here)")
        print("targets: single-shape p50 < 1 ms, zero errors, >= 200k batched predictions/s")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
