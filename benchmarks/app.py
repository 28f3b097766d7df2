"""Latency of the Gradio app through a real server and gradio_client (upload -> both probabilities returned).

Starts `gradio_app.launch` in a subprocess on a free loopback port with the upload cache off (every request
reads its file again), then measures: a 224x224 PNG (targets p50 <= 150 ms, p95 <= 300 ms), a full-field
16-bit RLE DICOM from ../shared/data/cbis_ddsm (target p95 <= 1.5 s), and 8 concurrent clients x 25 requests
(zero errors, p95). Models: the champions at --tracking-uri (default: the project's store); if there are none,
the tiny test champions are trained into a temporary store first (said in the output).

    .venv/bin/python benchmarks/app.py [--tracking-uri URI] [--png-requests 40] [--dicom-requests 10]

Figures on a shared 2-core machine are noisy; run it when the machine is otherwise idle.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.paths import default_data_root, default_tracking_uri  # noqa: E402


def _has_champions(uri: str) -> bool:
    from pipeline.config.tasks import TASKS
    from pipeline.serving.predict import load_available_models

    _, missing = load_available_models([t for t in TASKS if TASKS[t].in_main], tracking_uri=uri)
    return not missing  # the champions the main job trains (the app benchmark measures those)


def _start_server(uri: str, port: int) -> subprocess.Popen:
    code = ("import gradio_app; gradio_app.launch('127.0.0.1', %d, %r, image_cache_size=0, quiet=True)" % (port, uri))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with status {proc.returncode} before serving")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start within 300 s")


def _pct(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"n={len(a)} p50={np.percentile(a, 50):.0f} ms p95={np.percentile(a, 95):.0f} ms max={a.max():.0f} ms"


def _timed(client, path: Path) -> float:
    from gradio_client import handle_file

    t = time.perf_counter()
    out = client.predict(handle_file(str(path)), "", api_name="/predict")
    ms = (time.perf_counter() - t) * 1000
    for task in out["results"]:
        total = sum(out["results"][task]["probabilities"].values())
        if abs(total - 1) > 1e-6:
            raise AssertionError(f"{task} probabilities sum to {total}")
    return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--png-requests", type=int, default=40)
    parser.add_argument("--dicom-requests", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=25)
    args = parser.parse_args()

    from gradio_client import Client
    from PIL import Image

    from tests._app_helpers import CBIS_DICOM, MIAS_PNG, free_port, tiny_champions

    uri = args.tracking_uri or default_tracking_uri()
    if not _has_champions(uri):
        print(f"no density+malignancy champions at {uri}: training the tiny test champions (mini-MIAS, 32 px)")
        uri, versions = tiny_champions()
    print(f"models from {uri}")
    work = Path(tempfile.mkdtemp(prefix="mammoscope-bench-"))
    png = work / "mdb001_224.png"
    Image.open(MIAS_PNG).convert("L").resize((224, 224), Image.BILINEAR).save(png)
    dicom = CBIS_DICOM if CBIS_DICOM.exists() else next((default_data_root() / "cbis_ddsm").rglob("*.dcm"))

    port = free_port()
    t0 = time.perf_counter()
    proc = _start_server(uri, port)
    print(f"server up in {time.perf_counter() - t0:.1f} s (upload cache off)")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for _ in range(5):
            _timed(client, png)
        png_ms = [_timed(client, png) for _ in range(args.png_requests)]
        print(f"224x224 PNG -> both probabilities: {_pct(png_ms)}  (targets p50 <= 150, p95 <= 300)")

        _timed(client, dicom)
        dcm_ms = [_timed(client, dicom) for _ in range(args.dicom_requests)]
        print(f"{dicom.name} (16-bit RLE DICOM) -> both probabilities: {_pct(dcm_ms)}  (target p95 <= 1500)")

        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(args.clients)]
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def worker(c) -> None:
            for _ in range(args.per_client):
                try:
                    ms = _timed(c, png)
                    with lock:
                        latencies.append(ms)
                except Exception as exc:  # counted and printed: the benchmark reports every failure
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

        t = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        print(f"{args.clients} clients x {args.per_client} PNG requests: errors={len(errors)} {_pct(latencies)} "
              f"throughput={len(latencies) / wall:.1f} req/s")
        for e in errors[:5]:
            print("  error:", e)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
