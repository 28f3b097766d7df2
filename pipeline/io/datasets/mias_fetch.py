"""Fetch mini-MIAS on a fresh machine: download the official archive, verify every image, install it atomically.

The official archive (``all-mias.tar.gz``: 322 ``mdbNNN.pgm`` + ``Info.txt``; `download.mias_url`) publishes no
checksum, so the repo ships `DIGESTS_FILE`: every image's name, size and the SHA-256 of its decoded pixels, and one
digest of the labels read from Info.txt (computed from ../shared/data/mias, whose PNGs equal the original PGMs pixel
for pixel: `digest_rows`). A download that is damaged or changed is named image by image and never installed.

The folder it installs is what the mias adapter reads: ``<root>/mias/Info.txt`` + ``images/mdbNNN.pgm`` (the
original files, unconverted) + the archive's licence. Work happens in ``<root>/.mias-download/`` (the resumable
``.part`` file, the unpacked staging copy) and the result is moved into place in one rename, so ``<root>/mias`` is
either complete and verified or absent. Own code: no library verifies decoded pixels against a shipped list.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import sys
import tarfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.errors import DataIntegrityError, DatasetError, DownloadError
from pipeline.io.datasets.download import download_file, mias_url
from pipeline.io.datasets.mias import INFO_LINE, find_info_file

__all__ = ["DIGESTS_FILE", "LICENCE_NOTICE", "fetch_mias", "verify_mias", "digest_rows", "pixel_digest",
           "labels_digest", "read_digests", "problem_summary", "write_digests"]

logger = logging.getLogger(__name__)

DIGESTS_FILE = Path(__file__).with_name("mias_digests.csv")
LABELS_ROW = "Info.txt"  # the digests file's row for the labels
WORK_DIR = ".mias-download"
LICENCE_NOTICE = (
    "mini-MIAS (Mammographic Image Analysis Society MiniMammographic Database, Suckling et al. 1994) is for "
    "research use only under its owners' licence (Licence.txt, installed beside the images; it may not be "
    "rented, leased or sold; cite it in any publication). It is fetched from its owners at {url}; Mammoscope "
    "never redistributes it."
)


def pixel_digest(pixels: np.ndarray) -> str:
    """SHA-256 (hex) of a decoded image's pixel bytes (C order, its own dtype)."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def labels_digest(info_text: str) -> str:
    """SHA-256 (hex) of Info.txt's records (reference, tissue, class, severity, x, y, radius; blanks for missing),
    one per line in file order: the labels, independent of the file's spacing and header."""
    records = []
    for line in info_text.splitlines():
        match = INFO_LINE.match(line.strip())
        if match:
            records.append(" ".join((g or "").upper() for g in match.groups()))
    return hashlib.sha256("\n".join(records).encode("ascii")).hexdigest()


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _image_files(folder: Path) -> dict[str, Path]:
    """{mdbNNN: file} of the PGM/PNG images under `folder` (any depth)."""
    out: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".pgm", ".png") and path.stem.lower().startswith("mdb") and path.is_file():
            out.setdefault(path.stem.lower(), path)
    return out


def digest_rows(folder: str | Path) -> list[dict[str, str]]:
    """The digests file's rows for a mini-MIAS folder: name, height, width, sha256 per image, then Info.txt's."""
    folder = Path(folder)
    info = find_info_file(folder)
    if info is None:
        raise DatasetError(f"{folder}: no Info.txt; pass a mini-MIAS folder")
    rows = []
    for name, path in sorted(_image_files(folder).items()):
        pixels = _decode(path)
        rows.append({"name": name, "height": str(pixels.shape[0]), "width": str(pixels.shape[1]),
                     "sha256": pixel_digest(pixels)})
    rows.append({"name": LABELS_ROW, "height": "", "width": "",
                 "sha256": labels_digest(info.read_text(encoding="latin-1"))})
    return rows


def read_digests(path: str | Path = DIGESTS_FILE) -> dict[str, dict[str, str]]:
    """{name: row} of a digests file (`digest_rows` written as CSV)."""
    with open(path, newline="", encoding="ascii") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def write_digests(folder: str | Path, path: str | Path = DIGESTS_FILE) -> Path:
    """Write `digest_rows(folder)` to `path` (how the shipped list was made from ../shared/data/mias)."""
    rows = digest_rows(folder)
    with open(path, "w", newline="", encoding="ascii") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "height", "width", "sha256"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def verify_mias(folder: str | Path, *, digests: str | Path = DIGESTS_FILE, progress: bool = False) -> list[str]:
    """Problems of a mini-MIAS folder against the digests list, one per image or label file ('mdb010: pixels differ
    ...'); empty when every listed image is there with the listed pixels and Info.txt holds the listed labels."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    expected = read_digests(digests)
    problems = []
    info = find_info_file(folder)
    if info is None:
        infos = sorted(folder.rglob("[Ii]nfo.txt"))
        info = infos[0] if infos else None
    if info is None:
        problems.append("Info.txt: missing (the labels)")
    elif LABELS_ROW in expected and labels_digest(info.read_text(encoding="latin-1")) != expected[LABELS_ROW]["sha256"]:
        problems.append("Info.txt: its labels differ from the shipped list")
    files = _image_files(folder)
    names = [n for n in expected if n != LABELS_ROW]
    for name in tqdm(names, desc="verifying mini-MIAS", unit="img", file=sys.stderr, disable=not progress,
                     dynamic_ncols=True, leave=False):
        row = expected[name]
        path = files.get(name)
        if path is None:
            problems.append(f"{name}: missing")
            continue
        try:
            pixels = _decode(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: unreadable ({exc})")
            continue
        shape = (int(row["height"]), int(row["width"]))
        if pixels.shape != shape:
            problems.append(f"{name}: {pixels.shape[0]}x{pixels.shape[1]} pixels, expected {shape[0]}x{shape[1]}")
        elif pixel_digest(pixels) != row["sha256"]:
            problems.append(f"{name}: pixels differ from the shipped digest")
    return problems


def problem_summary(problems: list[str], shown: int = 8) -> str:
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


def _install(unpacked: Path, staging: Path, url: str) -> None:
    """Lay out the verified files as the mias adapter reads them: Info.txt, images/mdbNNN.pgm, licence, SOURCE.txt."""
    info = find_info_file(unpacked) or sorted(unpacked.rglob("[Ii]nfo.txt"))[0]
    (staging / "images").mkdir(parents=True)
    shutil.move(str(info), staging / "Info.txt")
    for name, path in _image_files(unpacked).items():
        shutil.move(str(path), staging / "images" / f"{name}{path.suffix.lower()}")
    for extra in sorted(unpacked.rglob("*")):  # the licence and README travel with the images
        if extra.is_file() and extra.suffix.lower() in (".txt", "") and extra.stem.lower() in ("licence", "readme"):
            shutil.move(str(extra), staging / extra.name)
    (staging / "SOURCE.txt").write_text(
        f"Downloaded from {url} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `mammoscope data fetch mias`;\n"
        f"every image's decoded pixels and the labels verified against pipeline/io/datasets/{DIGESTS_FILE.name}.\n"
        "mini-MIAS is for research use only: read Licence.txt.\n", encoding="ascii")


def offline_hint(root: Path) -> str:
    """What to do when the download cannot be made: a copy under MAMMOSCOPE_DATA, or a mirror URL."""
    return (f"to use a copy you have, set MAMMOSCOPE_DATA to a folder that holds it in mias/ (Info.txt and the "
            f"mdbNNN images), e.g. `MAMMOSCOPE_DATA=/path/to/data mammoscope main`; to download from a mirror, set "
            f"MAMMOSCOPE_MIAS_URL to its all-mias.tar.gz. Nothing was installed in {root}")


def fetch_mias(root: str | Path, *, url: str | None = None, progress: bool = True,
               say: Callable[[str], None] = logger.info, digests: str | Path = DIGESTS_FILE) -> Path:
    """Download, verify and install mini-MIAS into ``root/mias`` unless it holds an Info.txt already; returns it.

    Raises DownloadError (exit 3: no connection, HTTP error, interrupted: the ``.part`` file stays and the next
    run resumes it) or DataIntegrityError (exit 4: an image or the labels differ from the shipped digests; the
    download is deleted). ``root/mias`` is created only from a verified download, in one rename."""
    root = Path(root).expanduser()
    target = root / "mias"
    if find_info_file(target) is not None:
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DatasetError(f"{target}: exists but holds no Info.txt; move it away (or point MAMMOSCOPE_DATA at "
                           "another folder) and run again to download mini-MIAS there")
    url = url or mias_url()
    say(LICENCE_NOTICE.format(url=url))
    made_root = not root.exists()
    work = root / WORK_DIR
    archive = work / "all-mias.tar.gz"
    say(f"downloading mini-MIAS from {url} into {target} (resumable: an interrupted run carries on where it stopped)")
    try:
        download_file(url, archive, progress=progress)
    except DownloadError as exc:
        _remove_empty(work, root if made_root else None)
        raise DownloadError(exc.url, f"could not download mini-MIAS: {exc.problem}",
                            hint="; ".join(h for h in (exc.hint, offline_hint(root)) if h)) from exc
    unpacked, staging = work / "unpacked", work / "mias"
    try:
        for folder in (unpacked, staging):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataIntegrityError(f"{url}: the archive is damaged ({exc})") from exc
        problems = verify_mias(unpacked, digests=digests, progress=progress)
        if problems:
            raise DataIntegrityError(
                f"{url}: the download differs from the mini-MIAS this project verified "
                f"({len(problems)} problem(s): {problem_summary(problems)}); nothing was installed and the "
                f"download was deleted. Check the URL (MAMMOSCOPE_MIAS_URL), or copy a verified mini-MIAS to "
                f"{target}")
        _install(unpacked, staging, url)
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(staging, target)
    except DataIntegrityError:
        shutil.rmtree(work, ignore_errors=True)  # a damaged or changed archive is not resumed
        _remove_empty(None, root if made_root else None)
        raise
    shutil.rmtree(work, ignore_errors=True)
    say(f"mini-MIAS verified ({len(read_digests(digests)) - 1} images) and installed in {target}")
    return target


def _remove_empty(*folders: Path | None) -> None:
    """Remove each folder that is empty (what a failed first connection created), innermost first."""
    for folder in folders:
        if folder is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
