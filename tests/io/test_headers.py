"""Header facts without decoding pixels (pipeline.io.headers): real PNGs and DICOMs, a 16-bit PNG, a broken file."""
from __future__ import annotations

import numpy as np

from pipeline.io.headers import HEADER_COLUMNS, image_header, image_headers


def test_real_png_and_dicom_headers(mias_dir, cbis_dir):
    png = sorted((mias_dir / "images").glob("*.png"))[0]
    assert image_header(png) == {"height": 1024, "width": 1024, "bit_depth": 8, "format": "png",
                                 "manufacturer": None, "model": None}
    dcm = sorted((cbis_dir / "dicom").glob("*.dcm"))[0]
    h = image_header(dcm)
    assert (h["height"], h["width"], h["bit_depth"], h["format"]) == (4432, 2864, 16, "dicom")  # manifest rows/cols


def test_sixteen_bit_png_broken_file_and_the_table(tmp_path):
    from PIL import Image

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((30, 20), 4000, np.uint16)).save(deep)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert image_header(deep)["bit_depth"] == 16 and image_header(deep)["height"] == 30
    assert image_header(broken) == {c: None for c in HEADER_COLUMNS}
    table = image_headers([deep, broken, deep])
    assert list(table.index) == [str(deep), str(broken)] and list(table.columns) == list(HEADER_COLUMNS)
    assert table.loc[str(deep), "width"] == 20 and table["height"].isna().sum() == 1


def test_a_header_read_decodes_no_pixels(tmp_path, monkeypatch):
    """The audit reads thousands of headers: Pillow's load() (the decode) must never run."""
    from PIL import Image, ImageFile

    path = tmp_path / "cheap.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(path)
    called = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: called.append(1))
    assert image_header(path)["height"] == 40 and called == []
