"""`mammoscope data scan`: broken files are skipped and reported, exit status 0, the summary is printed."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.cli import main
from pipeline.io.scan import scan_dataset


def _folder_with_three_broken(tmp_images, tmp_path):
    files = tmp_images(17, folder="scan")
    folder = files[0].parent
    (folder / "zero.png").write_bytes(b"")
    good = folder / "img00.png"
    data = good.read_bytes()
    big = folder / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 80), dtype=np.uint8)).save(big)
    (folder / "truncated.png").write_bytes(big.read_bytes()[:200])
    big.unlink()
    (folder / "notes.dcm").write_text("a text file renamed .dcm\n" * 5)
    assert data and len(list(folder.iterdir())) == 20
    return folder


def test_scan_dataset_skips_broken_files(tmp_images, tmp_path):
    folder = _folder_with_three_broken(tmp_images, tmp_path)
    result = scan_dataset(folder, n_jobs=2, progress=False)
    assert result.adapter == "folder"
    assert len(result.table) == 17 and result.n_images == 17
    assert sorted(p.split("/")[-1] for p in result.errors["path"]) == ["notes.dcm", "truncated.png", "zero.png"]
    assert (result.table["height"] == 64).all()


def test_cli_scan_exit_zero_with_warning_and_errors_csv(tmp_images, tmp_path, capsys):
    folder = _folder_with_three_broken(tmp_images, tmp_path)
    errors_csv = tmp_path / "errors.csv"
    status = main(["data", "scan", str(folder), "--errors", str(errors_csv), "--n-jobs", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0
    assert "images read: 17   unreadable: 3" in out and "warning: 3 unreadable file(s) skipped" in err
    assert len(pd.read_csv(errors_csv)) == 3


def test_cli_scan_default_is_mias(mias_dir, monkeypatch, capsys):
    monkeypatch.setenv("MAMMOSCOPE_DATA", str(mias_dir.parent))
    from pipeline.io import scan

    monkeypatch.setattr(scan, "_probe", lambda p: {"path": p, "height": 1024, "width": 1024})  # reading: test_imageio
    assert main(["data", "scan", "--no-progress", "--n-jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "adapter: mias" in out and "patients: 161" in out and "density (per image): D 112, F 106, G 104" in out
