"""Exams per minute through the PACS path (`mammoscope pacs score`: QIDO-RS, WADO-RS, score, SR + maps by STOW-RS)
beside `mammoscope predict` (CSV + level files + PNG maps) on the same files, in one run (goal: PACS >= 0.8x).

Starts a real Orthanc on loopback (tests/_orthanc.py; Debian's orthanc + orthanc-dicomweb), uploads the eight
CBIS-DDSM studies and a four-view CDD-CESM exam wrapped as MG DICOM (tests/_pacs_data.py), then times each command
in-process from the model loading to its last write, alternating the two `--repeat` times (the first pair also
warms the caches). Models: the screening and density champions at --tracking-uri, else the tiny test champions
trained into a temporary store first (said in the output).

    nice -n 10 .venv/bin/python benchmarks/pacs.py [--tracking-uri URI] [--repeat 2] [--n-jobs N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.paths import default_data_root  # noqa: E402


def _has_models(uri: str | None) -> bool:
    from pipeline.serving.predict import load_available_models

    from pipeline.config.tasks import get_task

    models, _ = load_available_models(("screening",), tracking_uri=uri)
    return any(get_task(t).levels for t in models)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--n-jobs", type=int, default=None, help="mammoscope predict's reader processes")
    args = parser.parse_args(argv)

    from pipeline.cli import main as cli
    from tests._orthanc import Orthanc, missing_reason
    from tests._pacs_data import pacs_store, wrap_exam

    reason = missing_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    work = Path(tempfile.mkdtemp(prefix="mammoscope-bench-pacs-"))
    uri = args.tracking_uri
    if not _has_models(uri):
        print(f"no screening champion at {uri or 'the default store'}: training the tiny test champions", flush=True)
        uri = pacs_store(work / "models").tracking_uri
    data = default_data_root()
    files = sorted((data / "cbis_ddsm" / "dicom").glob("*.dcm")) + wrap_exam(data / "cdd_cesm", work / "cdd")
    import pydicom

    exams = len({pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files})
    server = Orthanc(work / "orthanc").start()
    pacs_s, predict_s = [], []
    try:
        for f in files:
            server.upload(f)
        for k in range(args.repeat):
            server_clear_results(server)
            t = time.perf_counter()
            code = cli(["pacs", "score", "--url", server.dicomweb, "--tracking-uri", uri])
            pacs_s.append(time.perf_counter() - t)
            assert code == 0, f"pacs score exited {code}"
            t = time.perf_counter()
            extra = [] if args.n_jobs is None else ["--n-jobs", str(args.n_jobs)]
            code = cli(["predict", *map(str, files), "--tracking-uri", uri, "--out", str(work / "predict.csv"),
                        "--overwrite", "--no-progress", "--maps", str(work / "maps"), *extra])
            predict_s.append(time.perf_counter() - t)
            assert code == 0, f"predict exited {code}"
            print(f"round {k + 1}: pacs {pacs_s[-1]:.1f} s, predict {predict_s[-1]:.1f} s", flush=True)
    finally:
        server.remove_storage()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    pacs_rate = exams / (statistics.median(pacs_s) / 60)
    predict_rate = exams / (statistics.median(predict_s) / 60)
    print(f"\n{exams} exams ({len(files)} images: 8 CBIS-DDSM full-field 16-bit RLE + 4 CDD-CESM 512 px), median of "
          f"{args.repeat}:")
    print(f"  mammoscope pacs score : {pacs_rate:6.1f} exams/min  (QIDO + WADO + score + SR and maps by STOW)")
    print(f"  mammoscope predict    : {predict_rate:6.1f} exams/min  (CSV + level files + PNG maps)")
    print(f"  ratio pacs / predict  : {pacs_rate / predict_rate:.2f}x (goal >= 0.8x)")
    return 0


def server_clear_results(server) -> None:
    """Delete the SR and map series a previous round stored, keeping the mammograms."""
    import requests

    for series in requests.get(f"{server.url}/series?expand", timeout=30).json():
        if series["MainDicomTags"].get("Modality") in ("SR", "OT"):
            requests.delete(f"{server.url}/series/{series['ID']}", timeout=30).raise_for_status()


if __name__ == "__main__":
    sys.exit(main())
