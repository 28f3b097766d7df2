"""Download the public datasets for users without ../shared/data (never run by the tests: they use no network).

* mini-MIAS (research use only, cite Suckling et al. 1994): the official archive ``all-mias.tar.gz`` from the
  Pilot European Image Processing Archive, http://peipa.essex.ac.uk/pix/mias/all-mias.tar.gz (322 PGM images +
  Info.txt). No official checksum is published: pass ``sha256=`` to pin the one you verified.
* CBIS-DDSM (CC BY 3.0, cite Lee et al. 2017): https://www.cancerimagingarchive.net/collection/cbis-ddsm/ . The
  163 GB of DICOM come through TCIA's NBIA Data Retriever with the collection's ``.tcia`` manifest; the four
  case-description CSVs are plain downloads listed in ``CBIS_CSVS`` below. Point ``mammoscope data scan`` at the
  folder that holds ``CBIS-DDSM/`` and the CSVs.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import urllib.request
from pathlib import Path

from pipeline.errors import DatasetError

__all__ = ["MIAS_URL", "CBIS_CSVS", "download_file", "download_mias", "download_cbis_csvs"]

logger = logging.getLogger(__name__)

MIAS_URL = "http://peipa.essex.ac.uk/pix/mias/all-mias.tar.gz"
_TCIA = "https://www.cancerimagingarchive.net/wp-content/uploads/"
CBIS_CSVS = {
    name: _TCIA + name
    for name in (
        "mass_case_description_train_set.csv",
        "mass_case_description_test_set.csv",
        "calc_case_description_train_set.csv",
        "calc_case_description_test_set.csv",
    )
}


def download_file(url: str, dest: str | Path, *, sha256: str | None = None, chunk: int = 1 << 20) -> Path:
    """Stream `url` to `dest` (via a .part file), verify `sha256` when given, return `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    logger.info("downloading %s -> %s", url, dest)
    with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:  # noqa: S310 - fixed https/http URLs
        while block := response.read(chunk):
            digest.update(block)
            out.write(block)
    if sha256 and digest.hexdigest() != sha256.lower():
        part.unlink(missing_ok=True)
        raise DatasetError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}; retry the download")
    part.replace(dest)
    return dest


def download_mias(dest: str | Path, *, sha256: str | None = None) -> Path:
    """Fetch and unpack mini-MIAS into `dest` (Info.txt + mdbNNN.pgm); returns the folder for the mias adapter."""
    dest = Path(dest)
    archive = download_file(MIAS_URL, dest / "all-mias.tar.gz", sha256=sha256)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    info = next(dest.rglob("Info.txt"), None)
    if info is None:
        raise DatasetError(f"{archive}: archive holds no Info.txt; check the download")
    return info.parent


def download_cbis_csvs(dest: str | Path) -> list[Path]:
    """Fetch the four CBIS-DDSM case-description CSVs into `dest`/labels (the DICOMs need the NBIA Data Retriever)."""
    labels = Path(dest) / "labels"
    paths = [download_file(url, labels / name) for name, url in CBIS_CSVS.items()]
    if shutil.which("NBIADataRetriever") is None:
        logger.info("CBIS-DDSM images: install TCIA's NBIA Data Retriever and open the collection's .tcia manifest")
    return paths
