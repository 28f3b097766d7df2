"""Latency of the Gradio app through a real server, the old app (main at 0202106) and this one in the same run: probabilities (``/predict``) and the map (``/explain``, the screening model's tile map of the whole
image) for a 1024 px mini-MIAS PNG, probabilities for a full-field 16-bit RLE DICOM, and N concurrent clients on
the new app (zero errors, p95). Targets: probabilities p95 <= 300 ms, map p95 <= 1 s for the PNG.

Two clients time the PNG: gradio_client (Python), and the documented HTTP API that curl, other languages and the
page's own event stream use (POST the file to /gradio_api/upload, POST /gradio_api/call/<api>, read its event
stream). gradio_client 2.x reads its event queue in a loop that sleeps 50 ms when the queue is empty
(gradio_client/utils.py), which adds 50-100 ms to every call that the server, the browser and an HTTP client do
not spend: a no-op endpoint with the same upload measured p50 124 ms through gradio_client, 18 ms over HTTP.

Each app runs in a subprocess on a free loopback port with the upload cache off (every request reads its file
again). The old app is `git archive <commit>` unpacked into a temporary folder and run from there; its models
are pickled with its own module paths, so each app scores its own tiny champions (density, malignancy and
screening, trained by that tree's code on the same real images with the same settings: tests/_tiny_store.py),
unless --tracking-uri / --old-tracking-uri name stores with champions (the main job's, for real-model figures).

    .venv/bin/python benchmarks/app.py [--old-commit 0202106] [--requests 30] [--clients 4 --per-client 10]

Figures on a shared 2-core machine are noisy; run it when the machine is otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OLD_COMMIT = "0202106"  # main before the reader app: the app with the lesion model on whole images and no report
TASKS = ("density", "malignancy", "screening")

# Trains the tiny champions with the code of the tree it runs in (cwd): density and malignancy from
# tests/_tiny_store.py, screening with the settings passed as JSON (tests._tiny_store.TINY_SCREENING of this tree).
_TRAIN = """
import json, sys
from pathlib import Path
from tests._tiny_store import tiny_store
from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
from pipeline.training.train import train_experiment
folder = Path(sys.argv[1])
store = tiny_store(folder)
exp = load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", json.loads(sys.argv[2]))
result = train_experiment(exp, store.tracking_uri, cache_dir=folder / "cache")
assert result.promoted, result.promotion_reason
print("URI", store.tracking_uri)
"""


def _old_tree(commit: str, folder: Path) -> Path:
    """The project at `commit` unpacked into `folder` (git archive: tracked files only); `../shared` linked beside
    it so its default data root finds the same images."""
    tree = folder / f"app-{commit}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shared = folder / "shared"
    if not shared.exists():
        shared.symlink_to((ROOT.parent / "shared").resolve())
    return tree


def _has_champions(tree: Path, uri: str) -> bool:
    code = ("import sys; from pipeline.serving.predict import load_available_models; "
            f"m, missing = load_available_models({list(TASKS)!r}, tracking_uri={uri!r}); sys.exit(1 if missing else 0)")
    return subprocess.run([sys.executable, "-c", code], cwd=tree, env=_env(tree), capture_output=True).returncode == 0


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "GRADIO_ANALYTICS_ENABLED": "False"}


def _train_tiny(tree: Path, folder: Path) -> str:
    from tests._tiny_store import TINY_SCREENING

    done = subprocess.run([sys.executable, "-c", _TRAIN, str(folder), json.dumps(TINY_SCREENING)], cwd=tree,
                          env=_env(tree), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training the tiny champions in {tree} failed:\n{done.stderr[-3000:]}")
    return next(line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("URI "))


def _start_server(tree: Path, uri: str, port: int) -> subprocess.Popen:
    code = ("import gradio_app; gradio_app.launch('127.0.0.1', %d, %r, image_cache_size=0, quiet=True)" % (port, uri))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tree, env=_env(tree), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app in {tree} exited with status {proc.returncode} before serving")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, 15)
    raise RuntimeError("the app did not start within 300 s")


def _pct(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):6.0f} ms  p95 {np.percentile(a, 95):6.0f} ms  (n={len(a)})"


def _timed(client, path: Path, api: str) -> float:
    from gradio_client import handle_file

    t = time.perf_counter()
    if api == "/score_exam":  # the page's whole-image path: score_exam with the maps (the new app only)
        out = client.predict([handle_file(str(path))], api_name=api)
        ms = (time.perf_counter() - t) * 1000
        if out["exam"] is None or out["images"][0]["map"] is None:
            raise AssertionError("no exam level or map in the /score_exam answer")
        return ms
    out = client.predict(handle_file(str(path)), "", api_name=api)
    ms = (time.perf_counter() - t) * 1000
    if api == "/predict":
        for task, res in out["results"].items():
            if abs(sum(res["probabilities"].values()) - 1) > 1e-6:
                raise AssertionError(f"{task} probabilities do not sum to 1")
    elif "map" not in out["explanations"].get("screening", {}):
        raise AssertionError("no screening map in the /explain answer: is a screening champion loaded?")
    return ms


class HttpApi:
    """Gradio's HTTP API without gradio_client: upload, call, read the event stream to its `complete` event."""

    def __init__(self, root: str):
        import httpx

        self.root = root.rstrip("/")
        self.http = httpx.Client(timeout=60)

    def predict(self, file: Any, roi: str, api_name: str) -> dict:
        """The endpoint's JSON output; `file` a path or gradio_client.handle_file's dict (as Client.predict takes)."""
        path = file["path"] if isinstance(file, dict) else str(file)
        with open(path, "rb") as fh:
            up = self.http.post(f"{self.root}/gradio_api/upload", files={"files": (Path(path).name, fh)})
        up.raise_for_status()
        file = {"path": up.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}
        call = self.http.post(f"{self.root}/gradio_api/call{api_name}", json={"data": [file, roi]})
        call.raise_for_status()
        event = None
        with self.http.stream("GET", f"{self.root}/gradio_api/call{api_name}/{call.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    if event == "error":
                        raise RuntimeError(f"{api_name} failed: {line[6:]}")
                    return json.loads(line[len("data: "):])[0]
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def _measure(name: str, tree: Path, uri: str, png: Path, dicom: Path, n: int, exam: bool = False
             ) -> dict[str, list[float]]:
    from gradio_client import Client

    from tests._app_helpers import free_port

    port = free_port()
    t0 = time.perf_counter()
    proc = _start_server(tree, uri, port)
    print(f"{name}: server up in {time.perf_counter() - t0:.1f} s")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        http = HttpApi(f"http://127.0.0.1:{port}/")
        out: dict[str, list[float]] = {}
        for label, path, api, count in (("probabilities, 1024 px PNG", png, "/predict", n),
                                        ("map, 1024 px PNG", png, "/explain", n),
                                        ("probabilities, 16-bit DICOM", dicom, "/predict", max(3, n // 4)),
                                        *([("calls + map (/score_exam), PNG", png, "/score_exam", n)] if exam else [])):
            for _ in range(2):
                _timed(client, path, api)  # warm-up
            out[f"{label} [gradio_client]"] = times = []
            twin = out[f"{label} [HTTP API]"] = [] if api != "/score_exam" and path == png else None
            for _ in range(count):  # the two clients alternate: both see the same machine load
                times.append(_timed(client, path, api))
                if twin is not None:
                    twin.append(_timed(http, path, api))
            if twin is None:
                del out[f"{label} [HTTP API]"]
        return out
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _concurrent(uri: str, png: Path, clients: int, per_client: int) -> None:
    from gradio_client import Client

    from tests._app_helpers import free_port

    port = free_port()
    proc = _start_server(ROOT, uri, port)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(c) -> None:
        for _ in range(per_client):
            try:
                ms = _timed(c, png, "/predict")
                with lock:
                    latencies.append(ms)
            except Exception as exc:  # counted and printed: the benchmark reports every failure
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    try:
        pool = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(clients)]
        t = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(c,)) for c in pool]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    print(f"new app, {clients} clients x {per_client} PNG /predict: errors={len(errors)} {_pct(latencies)} "
          f"throughput={len(latencies) / wall:.1f} req/s")
    for e in errors[:5]:
        print("  error:", e)
    if errors:
        raise SystemExit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="store with the new app's champions (default: tiny)")
    parser.add_argument("--old-tracking-uri", default=None, help="store with champions the old code can load")
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per measure and app")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients on the new app (0: skip)")
    parser.add_argument("--per-client", type=int, default=10)
    args = parser.parse_args()

    from tests._app_helpers import CBIS_DICOM, MIAS_PNG

    work = Path(tempfile.mkdtemp(prefix="mammoscope-bench-app-"))
    old = _old_tree(args.old_commit, work)
    stores = {}
    for name, tree, given in (("old", old, args.old_tracking_uri), ("new", ROOT, args.tracking_uri)):
        if given and _has_champions(tree, given):
            stores[name] = given
        else:
            t = time.perf_counter()
            stores[name] = _train_tiny(tree, work / f"store-{name}")
            print(f"{name}: tiny density, malignancy and screening champions trained by its own code in "
                  f"{time.perf_counter() - t:.0f} s")
    png, dicom = MIAS_PNG, CBIS_DICOM  # mdb001: 1024 x 1024 8-bit PNG; a 16-bit RLE full-field DICOM
    results = {f"old ({args.old_commit})": _measure("old", old, stores["old"], png, dicom, args.requests),
               "new (this tree)": _measure("new", ROOT, stores["new"], png, dicom, args.requests, exam=True)}
    print(f"\n{'measure [client]':48s} {'app':18s} latency through the server")
    for label in results["new (this tree)"]:
        for app, out in results.items():
            if label in out:
                print(f"{label:48s} {app:18s} {_pct(out[label])}")
    new = results["new (this tree)"]
    for client in ("HTTP API", "gradio_client"):
        print(f"targets [{client}]: probabilities p95 <= 300 ms -> "
              f"{np.percentile(new[f'probabilities, 1024 px PNG [{client}]'], 95):.0f} ms; "
              f"map p95 <= 1000 ms -> {np.percentile(new[f'map, 1024 px PNG [{client}]'], 95):.0f} ms")
    if args.clients > 0:
        _concurrent(stores["new"], png, args.clients, args.per_client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
