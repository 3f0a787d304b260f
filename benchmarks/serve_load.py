"""Load test of `swiftsam serve` on loopback: bounded and self-stopping.

Starts `swiftsam serve` in a subprocess on 127.0.0.1 (a free port), sends CLIENTS concurrent clients x REQUESTS
/v1/segment requests each (every request a different image, so every one needs the encoder; the cache is off),
checks every answer, and reports throughput and p50 / p99 latency. With --bad-every K, one request in K is
malformed (not an image, over the upload limit, bad JSON, a NaN box), and each must get its 4xx with a message.

    python benchmarks/serve_load.py --clients 16 --requests 50 --max-batch 8 --batch-wait-ms 10
    python benchmarks/serve_load.py --clients 16 --requests 50 --max-batch 1     # no batching
    python benchmarks/serve_load.py --clients 16 --requests 50 --max-batch 8 --bad-every 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BAD_KINDS = ("not an image", "oversized", "bad JSON", "NaN box")


def _jpeg(seed: int, hw: tuple[int, int]) -> bytes:
    rng = np.random.RandomState(seed)
    h, w = hw
    img = np.zeros((h, w, 3), np.uint8) + rng.randint(0, 80, 3).astype(np.uint8)
    y, x = rng.randint(0, h // 2), rng.randint(0, w // 2)
    img[y: y + h // 3, x: x + w // 3] = rng.randint(150, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _request(i: int, bad_every: int, hw: tuple[int, int], upload_mb: float) -> tuple[dict, str | None]:
    """httpx keywords for request i, and the kind of malformation (None: a good request)."""
    h, w = hw
    prompts = {"boxes": [[w * 0.2, h * 0.2, w * 0.7, h * 0.8]], "points": [[[w * 0.45, h * 0.5, 1]]]}
    image = _jpeg(i, hw)
    kind = BAD_KINDS[(i // bad_every) % len(BAD_KINDS)] if bad_every and i % bad_every == bad_every - 1 else None
    text = json.dumps(prompts)
    if kind == "not an image":
        image = b"this is not an image" * 10
    elif kind == "oversized":
        image = os.urandom(int(upload_mb * 1024 * 1024) + 1024)
    elif kind == "bad JSON":
        text = text[:-3]
    elif kind == "NaN box":
        text = text.replace(str(w * 0.2), "NaN", 1)
    return {"url": "/v1/segment", "files": {"image": ("im.jpg", image, "image/jpeg")}, "data": {"prompts": text}}, kind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--bad-every", type=int, default=0, help="one request in K malformed (0: none)")
    p.add_argument("--model", default="swiftsam-r18")
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--engine", default="torch")
    p.add_argument("--image", default="240x320", help="HxW of the test images")
    p.add_argument("--max-upload-mb", type=float, default=1.0)
    p.add_argument("--time-limit", type=float, default=1200.0, help="seconds; the test stops itself after this")
    p.add_argument("--json", help="append the result as a JSON line to this file")
    args = p.parse_args()
    hw = tuple(int(v) for v in args.image.split("x"))
    port = _free_port()
    cmd = [sys.executable, "-m", "swiftsam", "serve", "--model", args.model, "--engine", args.engine,
           "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(args.max_batch),
           "--batch-wait-ms", str(args.batch_wait_ms), "--cache-mb", "0", "--max-upload-mb", str(args.max_upload_mb),
           "--max-queue", str(max(64, args.clients * 2)), "--timeout", "300", "--log-level", "warning"]
    if args.input_size:
        cmd += ["--input-size", str(args.input_size)]
    server = subprocess.Popen(cmd, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.5)
        stop_at = time.monotonic() + args.time_limit
        results: list[tuple[float, str | None, int, str]] = []
        lock = threading.Lock()
        # requests built before the clock starts: the clients only send
        plans = [[_request(c * args.requests + k, args.bad_every, hw, args.max_upload_mb)
                  for k in range(args.requests)] for c in range(args.clients)]

        def client(c: int) -> None:
            with httpx.Client(base_url=base, timeout=300) as http:
                for kwargs, kind in plans[c]:
                    if time.monotonic() > stop_at:
                        return
                    t0 = time.perf_counter()
                    try:
                        r = http.post(**kwargs)
                        status, body = r.status_code, r.text
                    except httpx.HTTPError as e:
                        status, body = -1, str(e)
                    with lock:
                        results.append((time.perf_counter() - t0, kind, status, body))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        metrics = httpx.get(base + "/metrics").text
    finally:
        server.terminate()
        server.wait(30)
    sent = args.clients * args.requests
    good = [r for r in results if r[1] is None]
    bad = [r for r in results if r[1] is not None]
    good_ok = sum(1 for _, _, s, b in good if s == 200 and '"masks"' in b)
    bad_ok = sum(1 for _, _, s, b in bad if 400 <= s < 500 and '"detail"' in b)
    lat = np.array([r[0] for r in good]) * 1000
    encoder_calls = next((float(line.split()[-1]) for line in metrics.splitlines()
                          if line.startswith("swiftsam_encoder_calls_total")), 0.0)
    result = {
        "clients": args.clients, "requests": sent, "answered": len(results), "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms, "bad_every": args.bad_every, "good": len(good), "good_ok": good_ok,
        "bad": len(bad), "bad_4xx": bad_ok, "wall_s": round(wall, 2), "req_per_s": round(len(results) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "encoder_calls": encoder_calls, "model": args.model, "input_size": args.input_size, "engine": args.engine,
        "image": args.image, "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    failures = [(k, s, b[:200]) for _, k, s, b in results if (k is None) != (s == 200)]
    for f in failures[:5]:
        print("unexpected:", f, file=sys.stderr)
    return 0 if len(results) == sent and good_ok == len(good) and bad_ok == len(bad) else 1


if __name__ == "__main__":
    sys.exit(main())
