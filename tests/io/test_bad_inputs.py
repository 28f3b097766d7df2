"""Every case of the bad-input corpus (tests/badinputs.py) through read_image, the dataset scanner and the predictor."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from badinputs import UNPRIVILEGED_UID, Case, copy_entry, permission_blocks_reads, write_corpus
from pipeline.errors import ImageReadError
from pipeline.io.imageio import read_image
from pipeline.io.scan import scan_dataset


@pytest.fixture(scope="module")
def corpus() -> tuple[Path, dict[str, Case]]:
    """The corpus in a world-traversable temporary folder, so that `nobody` meets the file's own permissions."""
    base = Path(tempfile.mkdtemp(prefix="mammoscope-bad-inputs-"))
    base.chmod(0o755)
    root = base / "corpus"
    cases = write_corpus(root)
    yield root, {case.name: case for case in cases}
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def one_case_folders(corpus) -> dict[str, Path]:
    """For each case, a folder holding only that entry (copied as is: links stay links, modes stay modes)."""
    root, cases = corpus
    folders = {}
    for name, case in cases.items():
        folder = root.parent / "single" / name
        folder.mkdir(parents=True)
        os.chmod(root.parent / "single", 0o755)
        source = root / case.relpath
        parent = Path(case.relpath).parent
        if parent.suffix:  # an entry inside a folder named like an image (scans.png/): keep that folder
            folder = folder / parent.name
            folder.mkdir()
        copy_entry(source, folder / source.name)
        folder = root.parent / "single" / name
        folders[name] = folder
    return folders


CASE_NAMES = [
    "zero_bytes", "truncated_png", "truncated_jpeg", "text_as_png", "one_by_one", "decompression_bomb",
    "tiff_16bit", "rgba_png", "dicom_no_pixels", "dicom_unsupported_syntax", "dicom_ct", "symlink_loop_file",
    "unreadable", "spaces_non_ascii", "float_tiff_nan", "all_black", "all_white", "label_only", "inverted_png",
    "dicom_multi_frame", "fifo", "socket", "device", "dangling_link", "folder_named_png",
]


@contextlib.contextmanager
def unprivileged_if_root(path: Path):
    """Run the block as `nobody` when root can read the chmod 000 file `path` anyway; skip if that is impossible."""
    if permission_blocks_reads(path):
        yield
        return
    if os.geteuid() != 0:
        pytest.skip(f"{path.name} is readable although chmod 000 and this user is not root: cannot test")
    os.seteuid(UNPRIVILEGED_UID)
    try:
        if not permission_blocks_reads(path):
            pytest.skip("permissions do not stop reads on this file system even for an unprivileged user")
        yield
    finally:
        os.seteuid(0)


def test_corpus_is_complete(corpus):
    _, cases = corpus
    assert sorted(cases) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_read_image(corpus, name: str):
    root, cases = corpus
    case = cases[name]
    path = root / case.relpath
    guard = unprivileged_if_root(path) if name == "unreadable" else contextlib.nullcontext()
    with guard, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.is_error:
            with pytest.raises(ImageReadError) as info:
                read_image(path)
            message = str(info.value)
            assert str(path) in message, "the error must name the file"
            assert re.search(case.match, message), message
            return
        image, meta = read_image(path)
    assert image.dtype == np.float32 and image.ndim == 2
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert meta.original_shape == image.shape
    if case.match:  # readable, but the user must be warned
        assert any(re.search(case.match, w) for w in meta.warnings), meta.warnings
        assert any(re.search(case.match, str(w.message)) for w in caught)
    else:
        assert not meta.warnings


def test_readable_oddities_keep_the_pixels(corpus):
    """RGBA, 16-bit TIFF and the odd file name hold the same breast: the same grey values after reading."""
    root, cases = corpus
    reference, _ = read_image(root / cases["spaces_non_ascii"].relpath)
    rgba, _ = read_image(root / cases["rgba_png"].relpath)
    tiff, meta = read_image(root / cases["tiff_16bit"].relpath)
    np.testing.assert_allclose(rgba, reference, atol=1e-6)
    np.testing.assert_allclose(tiff, reference, atol=1e-6)
    assert meta.bits_stored == 16


@pytest.mark.parametrize("name", CASE_NAMES)
def test_scanner(corpus, one_case_folders, name: str, request: pytest.FixtureRequest):
    """`mammoscope data scan` on a folder holding only this case: a table row, or an error row naming the cause."""
    _, cases = corpus
    case = cases[name]
    folder = one_case_folders[name]
    guard = unprivileged_if_root(folder / Path(case.relpath).name) if name == "unreadable" else contextlib.nullcontext()
    with guard, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scan_dataset(folder, adapter="folder", progress=False)
    if case.is_error:
        assert len(result.table) == 0
        assert len(result.errors) == 1
        message = result.errors["error"].iloc[0]
        assert Path(case.relpath).name in message and re.search(case.match, message), message
    else:
        assert len(result.errors) == 0, result.errors["error"].tolist()
        assert result.n_images == 1


def test_scanner_whole_corpus(corpus):
    root, cases = corpus
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scan_dataset(root, adapter="folder", progress=False)
    readable = sum(not c.is_error for c in cases.values())
    # Every file is accounted for exactly once: a table row or an error row (the chmod-000 file reads as root).
    assert result.n_images + len(result.errors) == len(cases)
    assert result.n_images >= readable


@pytest.fixture(scope="module")
def tiny_models(tiny_store):
    """The session's tiny registered density champion (conftest `tiny_store`), loaded as the batch predictor uses it."""
    from pipeline.serving.predict import load_predictor

    return [load_predictor(tiny_store.model_uri("density"), tracking_uri=tiny_store.tracking_uri)]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_batch_predictor(corpus, tiny_models, name: str):
    """The batch predictor's row for this case: scored (probabilities summing to 1), or the same error as read_image
    (or, for a readable file scoring refuses, the error the case names)."""
    from pipeline.serving.batch import iter_scored
    from pipeline.io.batchio import InputItem

    root, cases = corpus
    case = cases[name]
    path = root / case.relpath
    guard = unprivileged_if_root(path) if name == "unreadable" else contextlib.nullcontext()
    with guard:
        batches = list(iter_scored([InputItem(path=str(path))], tiny_models, batch_size=4, n_jobs=1))
    assert len(batches) == 1 and len(batches[0]) == 1
    row = batches[0][0]
    assert row["path"] == str(path)
    if case.scoring_fails:
        assert row["error"] and str(path) in row["error"] and re.search(case.score_match, row["error"]), row["error"]
        assert row.get("density_call") is None
        return
    assert row["error"] is None
    total = sum(row[f"density_p_{c}"] for c in tiny_models[0].classes)
    assert abs(total - 1.0) < 1e-9 and row["density_call"] in tiny_models[0].classes
    if case.match:
        assert re.search(case.match, row["warnings"] or ""), row["warnings"]


@pytest.fixture(scope="module")
def good_folder(corpus) -> Path:
    """Three real mini-MIAS images beside the corpus: none of them may be lost among the bad inputs."""
    from badinputs import good_mias_images

    root, _ = corpus
    folder = root.parent / "good"
    folder.mkdir()
    for path in good_mias_images(3):
        shutil.copyfile(path, folder / path.name)
    return folder


def _expect_row(case: Case, row: dict, path: Path) -> None:
    """A batch/CLI row for `case`: scored, or an error naming the file and the cause (chmod 000 reads as root)."""
    if case.name == "unreadable" and not row.get("error"):
        return  # root reads a chmod 000 file: scored
    if case.scoring_fails:
        assert row.get("error") and path.name in row["error"] and re.search(case.score_match, row["error"]), row
    else:
        assert not row.get("error"), row
        assert row.get("density_call"), row
        if case.match:
            assert re.search(case.match, row.get("warnings") or ""), row


@pytest.mark.timeout(240)
def test_predict_cli_scores_or_reports_every_entry_within_a_time_limit(corpus, good_folder, tiny_store, tmp_path):
    """`mammoscope predict CORPUS GOOD` as a user runs it: ends in time (no FIFO wait), one row per entry."""
    import subprocess
    import sys

    import pandas as pd

    root, cases = corpus
    out = tmp_path / "results.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "pipeline.cli", "predict", str(root), str(good_folder), "--out", str(out),
           "--tracking-uri", tiny_store.tracking_uri, "--task", "density", "--n-jobs", "1", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode in (0, 3), done.stderr[-2000:]
    rows = {r["path"]: r for r in pd.read_csv(out, dtype=str, keep_default_na=False).to_dict("records")}
    rows = {k: {c: (v or None) for c, v in r.items()} for k, r in rows.items()}
    for case in cases.values():
        path = root / case.relpath
        assert os.path.abspath(path) in rows, f"{case.name}: no row for {path}"
        _expect_row(case, rows[os.path.abspath(path)], path)
    for good in sorted(good_folder.iterdir()):
        row = rows[os.path.abspath(good)]
        assert not row["error"] and row["density_call"], row
    assert len(rows) == len(cases) + 3


@pytest.mark.timeout(240)
def test_app_scores_or_refuses_every_entry_within_a_time_limit(corpus, tiny_store):
    """The app's reading and scoring code on every entry: a result or a clear gr.Error, never a hang.

    Regular files go through the real server by gradio_client (uploads arrive as regular files); FIFOs, sockets,
    devices and links cannot be uploaded, so the handler meets them as paths, as it would on a misconfigured server.
    """
    import gradio as gr
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    import gradio_app
    from app_support import ImageCache
    from tests._app_helpers import running_app

    root, cases = corpus
    models, missing = gradio_app.load_models(tiny_store.tracking_uri)
    handlers = gradio_app._Handlers(models, missing, ImageCache())
    uploadable = {n for n, c in cases.items() if os.path.isfile(root / c.relpath) and n != "unreadable"}

    with running_app(tiny_store.tracking_uri) as (url, _demo):
        client = Client(url, verbose=False)
        for name in sorted(uploadable):
            case = cases[name]
            if case.scoring_fails:
                with pytest.raises(AppError) as info:
                    client.predict(handle_file(str(root / case.relpath)), "", api_name="/predict")
                assert re.search(case.score_match, str(info.value)), (name, str(info.value))
            else:
                out = client.predict(handle_file(str(root / case.relpath)), "", api_name="/predict")
                assert sum(out["results"]["density"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
                if case.match:
                    assert any(re.search(case.match, w) for w in out["image"]["warnings"]), (name, out["image"])
    for name in sorted(set(cases) - uploadable - {"unreadable"}):
        case = cases[name]
        with pytest.raises(gr.Error) as info:
            handlers.api_predict(str(root / case.relpath), "")
        assert re.search(case.score_match, str(info.value.message)), (name, info.value.message)
