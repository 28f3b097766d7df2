"""read_image on every raster format and bit depth, the real mini-MIAS images and broken files."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from joblib import Parallel, delayed
from PIL import Image

from pipeline.errors import ImageReadError
from pipeline.io.imageio import read_image

GRID = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.uint8)  # 0..238


def test_grey_8bit_png_is_divided_by_255(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(GRID).save(path)
    image, meta = read_image(path)
    assert image.dtype == np.float32 and image.shape == (12, 10)
    np.testing.assert_allclose(image, GRID / 255.0, atol=1e-6)
    assert meta.format == "png" and meta.bits_stored == 8 and meta.original_shape == (12, 10)


def test_16bit_png_with_12bit_content_is_scaled_by_4095(tmp_path):
    values = (np.arange(120).reshape(12, 10) * 34).astype(np.uint16)  # max 4046 < 4096
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    image, meta = read_image(path)
    np.testing.assert_allclose(image, values / 4095.0, atol=1e-6)
    assert meta.bits_stored == 12


def test_16bit_tiff_full_range(tmp_path):
    values = (np.arange(120).reshape(12, 10) * 500).astype(np.uint16)  # max 59500
    path = tmp_path / "g16.tif"
    tifffile.imwrite(path, values)
    image, meta = read_image(path)
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-6)
    assert meta.format == "tiff" and meta.bits_stored == 16


def test_rgb_becomes_luminance_and_alpha_is_dropped(tmp_path):
    rgb = np.stack([GRID, GRID // 2, 255 - GRID], axis=-1)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    Image.fromarray(rgb).save(tmp_path / "c.png")
    rgba = np.concatenate([rgb, np.full(GRID.shape + (1,), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "ca.png")
    for name in ("c.png", "ca.png"):
        image, meta = read_image(tmp_path / name)
        np.testing.assert_allclose(image, expected, atol=1e-5)
        assert meta.photometric == "rgb"


def test_pgm_8_and_16_bit_and_jpeg(tmp_path):
    Image.fromarray(GRID).save(tmp_path / "g.pgm")
    np.testing.assert_allclose(read_image(tmp_path / "g.pgm")[0], GRID / 255.0, atol=1e-6)
    # a 16-bit binary PGM written by hand (big-endian samples, maxval 65535)
    values = (np.arange(120).reshape(12, 10) * 500).astype(">u2")
    (tmp_path / "g16.pgm").write_bytes(b"P5\n10 12\n65535\n" + values.tobytes())
    np.testing.assert_allclose(read_image(tmp_path / "g16.pgm")[0], values.astype(float) / 65535.0, atol=1e-6)
    flat = np.full((16, 16), 128, np.uint8)
    Image.fromarray(flat).save(tmp_path / "g.jpg", quality=95)
    image, meta = read_image(tmp_path / "g.jpg")
    assert meta.format == "jpeg" and abs(float(image.mean()) - 128 / 255) < 0.01


def test_all_mias_images_read(mias_dir):
    files = sorted((mias_dir / "images").glob("mdb*.*"))
    assert len(files) == 322

    def check(path: Path) -> tuple[str, tuple, float, float]:
        image, _ = read_image(path)
        return path.name, image.shape, float(image.min()), float(image.max())

    results = Parallel(n_jobs=2)(delayed(check)(f) for f in files)
    for name, shape, lo, hi in results:
        assert shape == (1024, 1024), name
        assert 0.0 <= lo < hi <= 1.0, name


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png: file is empty"):
        read_image(path)


def test_truncated_png_is_refused(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png: image data are truncated or corrupt") as info:
        read_image(tmp_path / "cut.png")
    assert info.value.hint


def test_text_file_and_missing_file_are_refused(tmp_path):
    (tmp_path / "notes.png").write_text("hello, not an image")
    with pytest.raises(ImageReadError, match="notes.png: not a recognised image format"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageReadError, match="bomb.png: .*too large|bomb.png: image header claims") as info:
        read_image(path)
    assert "truncated" not in str(info.value)  # refused on the header, not after trying to decode


def test_max_pixels_guard_applies_to_small_limits(tmp_path):
    Image.fromarray(GRID).save(tmp_path / "g.png")
    with pytest.raises(ImageReadError, match="10 x 12 pixels"):
        read_image(tmp_path / "g.png", max_pixels=100)
