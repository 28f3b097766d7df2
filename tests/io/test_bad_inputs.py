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

from badinputs import UNPRIVILEGED_UID, Case, permission_blocks_reads, write_corpus
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
        shutil.copy2(source, folder / source.name, follow_symlinks=False) if not source.is_symlink() else os.symlink(
            os.readlink(source), folder / source.name
        )
        folders[name] = folder
    return folders


CASE_NAMES = [
    "zero_bytes", "truncated_png", "truncated_jpeg", "text_as_png", "one_by_one", "decompression_bomb",
    "tiff_16bit", "rgba_png", "dicom_no_pixels", "dicom_unsupported_syntax", "dicom_ct", "symlink_loop_file",
    "unreadable", "spaces_non_ascii",
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
