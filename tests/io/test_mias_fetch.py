"""mini-MIAS on a fresh machine (#32): the real archive format served over a loopback HTTP server (real sockets,
real urllib) is downloaded with resume, verified image by image against the shipped digests and installed where
the mias adapter reads it; a damaged or changed download is named and never installed; offline fails in seconds."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.errors import DataIntegrityError, DownloadError
from pipeline.io.datasets.mias_fetch import DIGESTS_FILE, WORK_DIR, fetch_mias, read_digests
from tests._mias_server import ArchiveServer, build_archive, refused_url

pytestmark = pytest.mark.slow


def test_a_broken_transfer_is_resumed_within_the_run_and_by_the_next_run_then_verified_and_installed(
        tmp_path: Path, mias_archive: Path) -> None:
    from pipeline.io.datasets import load_dataset

    data = mias_archive.read_bytes()
    root = tmp_path / "data"
    cut = 1 << 20
    with ArchiveServer(data, cut_after=cut, cuts=4) as server:  # every try of the first run breaks after 1 MiB
        with pytest.raises(DownloadError, match="run the same command again to resume") as info:
            fetch_mias(root, url=server.url, progress=False)
        assert info.value.exit_code == 3
        assert server.requests == [None, f"bytes={cut}-", f"bytes={2 * cut}-", f"bytes={3 * cut}-"]
        assert not (root / "mias").exists()  # nothing half-installed ...
        assert (root / WORK_DIR / "all-mias.tar.gz.part").stat().st_size == 4 * cut  # ... only the resumable part

        lines: list[str] = []
        target = fetch_mias(root, url=server.url, progress=False, say=lines.append)
        assert server.requests[4:] == [f"bytes={4 * cut}-"]  # the second run carried on from the kept bytes
    assert target == root / "mias"
    assert sorted(p.name for p in root.iterdir()) == ["mias"]  # the work folder is gone
    assert len(list((target / "images").glob("mdb*.pgm"))) == len(read_digests()) - 1 == 322
    assert (target / "Licence.txt").is_file() and (target / "Info.txt").is_file()
    table = load_dataset("mias", target)
    assert len(table) == 330 and table["patient_id"].nunique() == 161
    notice = " ".join(lines)
    assert "research use only" in notice and server.url in notice and "never redistributes" in notice
    # installed: a third run finds it and downloads nothing
    assert fetch_mias(root, url=refused_url(), progress=False) == target


def test_a_corrupted_and_a_missing_image_are_named_and_nothing_is_installed(
        tmp_path: Path, mias_pgms: Path) -> None:
    archive = build_archive(mias_pgms, tmp_path / "all-mias.tar.gz", corrupt={"mdb010": "pixel", "mdb200": "missing"})
    root = tmp_path / "data"
    root.mkdir()
    with ArchiveServer(archive.read_bytes()) as server:
        with pytest.raises(DataIntegrityError) as info:
            fetch_mias(root, url=server.url, progress=False)
    message = str(info.value)
    assert "mdb010: pixels differ" in message and "mdb200: missing" in message and "2 problem(s)" in message
    assert info.value.exit_code == 4
    assert list(root.iterdir()) == []  # not installed, the damaged download deleted (not resumed next time)


def test_a_damaged_archive_is_refused(tmp_path: Path, mias_archive: Path) -> None:
    # the server says the file is complete, but it is the first MiB of the archive only
    with ArchiveServer(mias_archive.read_bytes()[: 1 << 20]) as server:
        with pytest.raises(DataIntegrityError, match="the archive is damaged"):
            fetch_mias(tmp_path / "data", url=server.url, progress=False)
    assert not (tmp_path / "data").exists()


def test_a_refused_connection_fails_in_seconds_says_what_to_do_and_leaves_nothing(tmp_path: Path) -> None:
    url = refused_url()
    root = tmp_path / "data"
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        fetch_mias(root, url=url, progress=False)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert url in message and "could not connect" in message and "refused" in message.lower()
    assert "MAMMOSCOPE_DATA" in message and "mias/" in message
    assert not root.exists()


def test_an_http_error_is_reported_with_its_status(tmp_path: Path) -> None:
    with ArchiveServer(b"") as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch_mias(tmp_path / "data", url=server.url.replace("all-mias", "no-such"), progress=False)
    assert not (tmp_path / "data").exists()


def test_the_shipped_digests_list_every_mini_mias_image_and_the_labels() -> None:
    rows = read_digests(DIGESTS_FILE)
    assert len(rows) == 323 and "Info.txt" in rows
    assert all(len(r["sha256"]) == 64 for r in rows.values())
    assert {r["height"] for n, r in rows.items() if n != "Info.txt"} == {"1024"}
