"""Benchmark: the draw-a-digit app under load. Starts `digits-app` on loopback, then ``--clients`` concurrent
clients (one keep-alive connection each) POST real digit PNGs to /api/predict for ``--seconds``. The PNGs are test
split digits as a scan gives them: dark ink on white, enlarged 5× to 140×140. Prints errors, wrong answers,
requests/s, p50/p99 latency and the server's resident memory at start (after one request) and end, with its peak.

    python benchmarks/app_load.py                                    # checkpoint models/model.pt, 20 clients, 30 s
    python benchmarks/app_load.py --model models:/digits-mnist@champion --out load.json

The clients share the machine with the server: on 2 cores they take CPU time the server would otherwise have.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import psutil
from PIL import Image

from digits import data, device, files

MiB = 1024 * 1024


def digit_pngs(split_path: Path, n: int) -> list[tuple[bytes, int]]:
    """(PNG bytes, label) for the first ``n`` digits of a split: dark on white, 140×140."""
    split = data.load_split(split_path)
    out = []
    for image, label in zip(split.images[:n].numpy(), split.labels[:n].tolist(), strict=True):
        buf = io.BytesIO()
        Image.fromarray(255 - image.reshape(28, 28)).resize((140, 140), Image.Resampling.BICUBIC).save(buf, "PNG")
        out.append((buf.getvalue(), label))
    return out


def start_app(model_args: list[str], port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "digits.app", *model_args, "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"digits-app exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"digits-app did not answer in 300 s:\n{log.read_text()[-3000:]}")


async def client(session: aiohttp.ClientSession, url: str, pngs: list, start: int, step: int, until: float,
                 latencies: list[float], outcomes: dict[str, int]) -> None:  # fmt: skip
    """Post image ``start``, ``start + step``, ... until ``until``; record each latency and outcome."""
    i = start
    while time.perf_counter() < until:
        body, label = pngs[i % len(pngs)]
        i += step
        sent = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"Content-Type": "image/png"}) as reply:
                answer = await reply.json()
                ok = reply.status == 200
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            outcomes[f"error: {type(exc).__name__}"] = outcomes.get(f"error: {type(exc).__name__}", 0) + 1
            continue
        latencies.append(time.perf_counter() - sent)
        kind = ("right" if answer["class"] == label else "wrong") if ok else f"error: HTTP {reply.status}"
        outcomes[kind] = outcomes.get(kind, 0) + 1


async def load(url: str, pngs: list, clients: int, seconds: float) -> tuple[list[float], dict[str, int], float]:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        began = time.perf_counter()
        until = began + seconds
        await asyncio.gather(*(client(session, url, pngs, k, clients, until, latencies, outcomes)
                               for k in range(clients)))  # fmt: skip
        return latencies, outcomes, time.perf_counter() - began


def machine() -> str:
    """CPU model, instruction-set class and core count, e.g. 'AMD EPYC 9B14, AVX-512, 2 cores'."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())  # fmt: skip
    return f"{model}, {device.cpu_isa(info)}, {psutil.cpu_count()} cores"


def memory(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc/<pid>/status."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default="models/model.pt", help="a train-stage checkpoint (default)")
    source.add_argument("--model", help="an MLflow model URI instead, e.g. models:/digits-mnist@champion")
    ap.add_argument("--split", default="data/processed/test.pt", help="where the digits come from")
    ap.add_argument("--images", type=int, default=500, help="distinct PNGs, cycled through")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()

    pngs = digit_pngs(Path(args.split), args.images)
    model_args = ["--model", args.model] if args.model else ["--checkpoint", args.checkpoint]
    log = Path(f"app-load-{args.port}.log")
    proc = start_app(model_args, args.port, log)
    url = f"http://127.0.0.1:{args.port}/api/predict"
    try:
        asyncio.run(load(url, pngs, 1, 0))  # one request: the first inference's one-off costs are not load
        rss_start, _ = memory(proc.pid)
        cpu_before = sum(psutil.Process(proc.pid).cpu_times()[:2])
        latencies, outcomes, wall = asyncio.run(load(url, pngs, args.clients, args.seconds))
        rss_end, rss_peak = memory(proc.pid)
        server_cpu = sum(psutil.Process(proc.pid).cpu_times()[:2]) - cpu_before
    finally:
        proc.terminate()
        proc.wait(30)
    log.unlink()
    ms = sorted(1000 * t for t in latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) > 1 else ms * 99
    errors = sum(n for kind, n in outcomes.items() if kind.startswith("error"))
    result = {
        "model": args.model or args.checkpoint,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "requests": len(latencies) + errors,
        "errors": errors,
        "wrong": outcomes.get("wrong", 0),
        "outcomes": outcomes,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "server_cpu_share": round(server_cpu / wall / psutil.cpu_count(), 2),
        "rss_mib_start": round(rss_start, 1),
        "rss_mib_end": round(rss_end, 1),
        "rss_mib_peak": round(rss_peak, 1),
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    print(f"{result['requests']} requests in {wall:.1f} s from {args.clients} clients: {errors} errors, "
          f"{result['wrong']} wrong, {result['requests_per_s']} requests/s, p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms; server RSS {rss_start:.0f} → {rss_end:.0f} MiB (peak {rss_peak:.0f})")
    if args.out:
        files.write_json(args.out, result)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
