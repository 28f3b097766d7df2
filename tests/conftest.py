"""Shared fixtures: the real data folders (skipped only when ../shared/data is absent), a tiny image factory and the
session's tiny MLflow store of density + malignancy champions."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.paths import default_data_root
from tests._tiny_store import TinyStore, tiny_store as _tiny_store

DATA_ROOT = default_data_root()


def _data_dir(name: str) -> Path:
    folder = DATA_ROOT / name
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (set MAMMOSCOPE_DATA to the shared data root)")
    return folder


@pytest.fixture(scope="session")
def mias_dir() -> Path:
    """The mini-MIAS folder (Info.txt, images/, manifest.csv)."""
    return _data_dir("mias")


@pytest.fixture(scope="session")
def cbis_dir() -> Path:
    """The CBIS-DDSM folder (dicom/, labels/, manifest.csv)."""
    return _data_dir("cbis_ddsm")


@pytest.fixture(scope="session")
def cdd_dir() -> Path:
    """The CDD-CESM folder (images/, manifest.csv)."""
    return _data_dir("cdd_cesm")


@pytest.fixture
def tmp_images(tmp_path: Path) -> Callable[..., list[Path]]:
    """Factory writing `n` small synthetic breast-like PNGs (bright half-disc at the left edge) into a folder."""
    from PIL import Image

    def make(n: int, folder: str = "images", size: tuple[int, int] = (64, 48), seed: int = 0) -> list[Path]:
        rng = np.random.default_rng(seed)
        out = tmp_path / folder
        out.mkdir(parents=True, exist_ok=True)
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        paths = []
        for i in range(n):
            disc = ((yy - h / 2) ** 2 + xx**2) < (0.4 * h) ** 2
            img = np.where(disc, 150 + rng.integers(0, 80, size), rng.integers(0, 10, size)).astype(np.uint8)
            path = out / f"img{i:02d}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
        return paths

    return make


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    """The tiny mammoscope-density/-malignancy champions (tests/_tiny_store.py), trained once per session on real
    mini-MIAS images: tracking_uri, versions, names, cache_dir, and each training's result and progress lines."""
    _data_dir("mias")
    return _tiny_store(tmp_path_factory.mktemp("tiny-store"))


@pytest.fixture(scope="session")
def mias_pgms(tmp_path_factory: pytest.TempPathFactory, mias_dir: Path) -> Path:
    """mini-MIAS converted back to the official archive's files (mdbNNN.pgm, Info.txt, Licence.txt) in a temp dir."""
    from tests._mias_server import pgm_folder

    return pgm_folder(mias_dir, tmp_path_factory.mktemp("mias-pgm"))


@pytest.fixture(scope="session")
def mias_archive(tmp_path_factory: pytest.TempPathFactory, mias_pgms: Path) -> Path:
    """A real all-mias.tar.gz built from those files (what the official URL serves), once per session."""
    from tests._mias_server import build_archive

    return build_archive(mias_pgms, tmp_path_factory.mktemp("mias-archive") / "all-mias.tar.gz")
