"""Download public files for users without ../shared/data: resumable, with a progress bar, failing fast offline.

* mini-MIAS (research use only, cite Suckling et al. 1994): the official archive ``all-mias.tar.gz`` from the
  Pilot European Image Processing Archive (`MIAS_URL`; ``$MAMMOSCOPE_MIAS_URL`` overrides it). No official checksum
  is published: `pipeline.io.datasets.mias_fetch` verifies every image's decoded pixels against a list the repo
  ships. `mammoscope data fetch mias` and `mammoscope main` call it.
* CBIS-DDSM (CC BY 3.0, cite Lee et al. 2017): https://www.cancerimagingarchive.net/collection/cbis-ddsm/ . The
  163 GB of DICOM come through TCIA's NBIA Data Retriever with the collection's ``.tcia`` manifest; the four
  case-description CSVs are plain downloads listed in ``CBIS_CSVS`` below. Point ``mammoscope data scan`` at the
  folder that holds ``CBIS-DDSM/`` and the CSVs.

Own code over a download library (requests, pooch): urllib is in the standard library and enough for one HTTP GET
with a Range header; pooch neither resumes a partial file nor fails fast with the message users need here.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import DownloadError

__all__ = ["MIAS_URL", "CBIS_CSVS", "mias_url", "download_file", "download_cbis_csvs"]

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
# errors of a connection that failed or broke: retried with a Range request where some bytes arrived
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def mias_url() -> str:
    """The mini-MIAS archive URL: $MAMMOSCOPE_MIAS_URL (a mirror, a loopback test server), else the official one."""
    return os.environ.get("MAMMOSCOPE_MIAS_URL") or MIAS_URL


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file's size in bytes from Content-Range (a 206 answer) or Content-Length, None when not sent."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _attempt(url: str, part: Path, *, timeout: float, chunk: int, progress: bool, desc: str) -> bool:
    """One GET of `url` into `part`, resuming from its size; True when the whole file arrived."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URL of a dataset
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is not a prefix the server knows: start again
            part.unlink()
            return False
        raise
    from tqdm.auto import tqdm

    with response:
        if offset and response.status != 206:  # the server ignored the Range header: start from byte 0
            offset = 0
        total = _total_size(response, offset)
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
            disable=not progress, dynamic_ncols=True, leave=False,
        ) as bar:
            while block := response.read(chunk):
                out.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    return total is None or size == total


def download_file(url: str, dest: str | Path, *, sha256: str | None = None, chunk: int = 1 << 18,
                  timeout: float = 10.0, retries: int = 3, progress: bool = True) -> Path:
    """Stream `url` to `dest` through ``dest.part`` (resumed with a Range request where one is left from an earlier
    run or a broken connection, up to `retries` times), verify `sha256` when given, return `dest`.

    `timeout`: seconds to connect and between blocks. A first connection that fails raises DownloadError at once
    (offline: no retries, no file left); a connection that breaks after bytes arrived is retried from where it
    stopped; the ``.part`` file stays for the next run when every retry fails."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    logger.info("downloading %s -> %s%s", url, dest,
                f" (resuming at {part.stat().st_size} bytes)" if part.exists() else "")
    tries = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            if _attempt(url, part, timeout=timeout, chunk=chunk, progress=progress, desc=dest.name):
                break
            problem = "the connection closed before the whole file arrived"
        except urllib.error.HTTPError as exc:
            _drop_empty(part)
            raise DownloadError(url, f"the server answered HTTP {exc.code} {exc.reason}") from exc
        except _NETWORK_ERRORS as exc:
            got = (part.stat().st_size if part.exists() else 0) > before
            _drop_empty(part)
            if not got:  # nothing arrived: offline, refused or unknown host; fail now instead of waiting
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(url, f"could not connect ({_reason(exc)})",
                                    hint=f"{kept} bytes kept in {part}: run again to resume" if kept else "") from exc
            problem = f"the connection broke ({_reason(exc)})"
        tries += 1
        if tries > retries:
            raise DownloadError(url, f"{problem}; {part.stat().st_size} bytes kept in {part}",
                                hint="run the same command again to resume the download")
        logger.warning("%s: %s; resuming at byte %d (retry %d of %d)", url, problem, part.stat().st_size, tries,
                       retries)
    if sha256:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(url, f"sha256 {digest.hexdigest()} does not match the expected {sha256}",
                                hint="the file was deleted; retry the download")
    part.replace(dest)
    return dest


def _reason(exc: BaseException) -> str:
    """The innermost reason of a urllib error, as text (e.g. '[Errno 111] Connection refused')."""
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc) or type(exc).__name__


def _drop_empty(part: Path) -> None:
    """Remove a .part file that holds nothing (a failed first connection leaves no trace)."""
    if part.exists() and part.stat().st_size == 0:
        part.unlink()


def download_cbis_csvs(dest: str | Path) -> list[Path]:
    """Fetch the four CBIS-DDSM case-description CSVs into `dest`/labels (the DICOMs need the NBIA Data Retriever)."""
    labels = Path(dest) / "labels"
    paths = [download_file(url, labels / name) for name, url in CBIS_CSVS.items()]
    if shutil.which("NBIADataRetriever") is None:
        logger.info("CBIS-DDSM images: install TCIA's NBIA Data Retriever and open the collection's .tcia manifest")
    return paths
