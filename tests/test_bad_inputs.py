"""Every case of the bad-input corpus (tests/badinputs.py) through read_image, the dataset scanner and the predictor."""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from badinputs import UNPRIVILEGED_UID, Case, permission_blocks_reads, write_corpus
from pipeline.errors import ImageReadError
from pipeline.imageio import read_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Case]]:
    root = tmp_path_factory.mktemp("bad inputs")
    cases = write_corpus(root)
    yield root, {case.name: case for case in cases}
    (root / "locked.png").chmod(0o644)  # let pytest clean up


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
