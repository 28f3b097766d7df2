"""The bad-input corpus: writes every awkward file a user may hand Mammoscope into a folder, with what must happen.

Generated at test time (nothing shipped): real mini-MIAS pixels and pydicom's own test DICOMs, damaged on purpose.
Each `Case` says whether `read_image` must read the file (`expect="ok"`, possibly with a warning) or refuse it with
an `ImageReadError` whose message matches `match`; a readable file that scoring must still refuse (a 1 x 1 image)
names its error in `score_error`. The same table drives the tests of `read_image`, the dataset
scanner and the batch predictor: one code path, one expectation per case.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.paths import default_mias_dir

__all__ = ["Case", "write_corpus", "copy_entry", "permission_blocks_reads", "good_mias_images", "UNPRIVILEGED_UID"]

UNPRIVILEGED_UID = 65534  # `nobody`: used to make a chmod 000 file unreadable when the tests run as root
_SOURCE = "mdb001.png"  # real mammogram whose pixels feed the readable oddities


@dataclass(frozen=True)
class Case:
    """One corpus entry: file name (relative to the corpus folder), expected outcome and message pattern."""

    name: str
    relpath: str
    expect: str  # "ok" (read, maybe with a warning) or "error" (ImageReadError)
    match: str = ""  # regex the error message (or, for "ok", the warning) must match
    note: str = ""
    score_error: str = ""  # for a readable file that scoring must still refuse: regex its error row must match

    @property
    def is_error(self) -> bool:
        """True when reading the file must raise ImageReadError."""
        return self.expect == "error"

    @property
    def scoring_fails(self) -> bool:
        """True when the batch predictor must give an error row (unreadable, or readable but unscorable)."""
        return self.is_error or bool(self.score_error)

    @property
    def score_match(self) -> str:
        """Regex the batch predictor's error row must match (when `scoring_fails`)."""
        return self.match if self.is_error else self.score_error


def good_mias_images(n: int) -> list[Path]:
    """The first `n` real mini-MIAS PNGs (1024 x 1024, 8-bit) in name order."""
    images = sorted((default_mias_dir() / "images").glob("mdb*.png"))[:n]
    if len(images) < n:
        raise FileNotFoundError(f"need {n} mini-MIAS images under {default_mias_dir() / 'images'}, found {len(images)}")
    return images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature + IHDR claiming width x height 8-bit grey, one tiny IDAT, IEND: ~70 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _small_mammogram(size: int = 256) -> np.ndarray:
    """mdb001 downscaled to size x size uint8 (real breast tissue, small enough for fast tests)."""
    from PIL import Image

    with Image.open(default_mias_dir() / "images" / _SOURCE) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.BILINEAR))


def _dicom_from(testfile: str):
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file(testfile))


def _make_socket(path: Path) -> None:
    """A Unix-domain socket file at `path` (bound, then closed: the file stays)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def copy_entry(source: Path, target: Path) -> None:
    """Copy one corpus entry as what it is: links stay links, FIFOs and sockets are made anew, modes are kept."""
    mode = os.lstat(source).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(target)
    elif stat.S_ISSOCK(mode):
        _make_socket(target)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def permission_blocks_reads(path: Path) -> bool:
    """True when this process cannot open `path` (False for root, whom chmod 000 does not stop)."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        return True
    return False


def write_corpus(root: Path) -> list[Case]:
    """Write every bad (or merely odd) input into `root`; return the cases in a fixed order."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    src_png = default_mias_dir() / "images" / _SOURCE
    raw_png = src_png.read_bytes()
    small = _small_mammogram()
    cases: list[Case] = []

    (root / "zero_bytes.png").write_bytes(b"")
    cases.append(Case("zero_bytes", "zero_bytes.png", "error", r"empty \(0 bytes\)"))

    (root / "truncated.png").write_bytes(raw_png[: len(raw_png) // 2])
    cases.append(Case("truncated_png", "truncated.png", "error", r"truncated or corrupt"))

    jpeg_path = root / "truncated.jpg"
    Image.fromarray(small).save(jpeg_path, quality=90)
    jpeg = jpeg_path.read_bytes()
    jpeg_path.write_bytes(jpeg[: len(jpeg) // 2])
    cases.append(Case("truncated_jpeg", "truncated.jpg", "error", r"truncated or corrupt"))

    (root / "text_named.png").write_text("patient notes, not an image\n" * 20, encoding="utf-8")
    cases.append(Case("text_as_png", "text_named.png", "error", r"not a recognised image format"))

    Image.fromarray(np.array([[128]], dtype=np.uint8)).save(root / "one_pixel.png")
    cases.append(Case("one_by_one", "one_pixel.png", "ok", note="readable; too small to be a mammogram",
                      score_error=r"1 x 1 px, too small to be a mammogram"))

    (root / "bomb.png").write_bytes(_bomb_png())
    cases.append(Case("decompression_bomb", "bomb.png", "error", r"decompression bomb"))

    import tifffile

    tifffile.imwrite(root / "sixteen_bit.tif", small.astype(np.uint16) * 257)  # full 16-bit range
    cases.append(Case("tiff_16bit", "sixteen_bit.tif", "ok"))

    rgba = np.dstack([small, small, small, np.full_like(small, 200)])
    Image.fromarray(rgba, mode="RGBA").save(root / "rgba.png")
    cases.append(Case("rgba_png", "rgba.png", "ok"))

    ds = _dicom_from("CT_small.dcm")
    del ds.PixelData
    ds.save_as(root / "no_pixels.dcm")
    cases.append(Case("dicom_no_pixels", "no_pixels.dcm", "error", r"no pixel data"))

    ds = _dicom_from("MR_small_RLE.dcm")  # compressed; claim MPEG-2, which no Python decoder handles
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.save_as(root / "mpeg2_syntax.dcm")
    cases.append(Case("dicom_unsupported_syntax", "mpeg2_syntax.dcm", "error", r"transfer syntax"))

    ds = _dicom_from("CT_small.dcm")
    ds.save_as(root / "ct_scan.dcm")
    cases.append(Case("dicom_ct", "ct_scan.dcm", "ok", r"modality is CT, not MG"))

    loop_dir = root / "loop"
    loop_dir.mkdir()
    os.symlink("..", loop_dir / "parent")  # folder loop: a walker following links would never end
    os.symlink("self.png", loop_dir / "self.png")  # file loop: opening it fails with ELOOP
    cases.append(Case("symlink_loop_file", "loop/self.png", "error", r"points to itself or loops"))

    locked = root / "locked.png"
    shutil.copyfile(src_png, locked)
    locked.chmod(0)
    cases.append(Case("unreadable", "locked.png", "error", r"[Pp]ermission denied", note="chmod 000"))

    import tifffile as _tifffile

    nan_float = small.astype(np.float32) / 255.0
    nan_float[100:110, 20:40] = np.nan  # 200 NaN pixels inside the breast
    _tifffile.imwrite(root / "float_nan.tif", nan_float)
    cases.append(Case("float_tiff_nan", "float_nan.tif", "ok", r"200 non-finite pixel"))

    Image.fromarray(np.zeros((1024, 1024), np.uint8)).save(root / "all_black.png")
    cases.append(Case("all_black", "all_black.png", "ok", note="readable; no breast", score_error=r"image is blank"))
    Image.fromarray(np.full((1024, 1024), 255, np.uint8)).save(root / "all_white.png")
    cases.append(Case("all_white", "all_white.png", "ok", note="readable; no breast", score_error=r"image is blank"))

    label_only = np.zeros((512, 512), np.uint8)
    label_only[20:40, 400:480] = 255  # a film label, nothing else
    Image.fromarray(label_only).save(root / "label_only.png")
    cases.append(Case("label_only", "label_only.png", "ok", note="a label on black, no breast",
                      score_error=r"no breast found"))

    Image.fromarray(255 - small).save(root / "inverted_export.png")  # a MONOCHROME1 export saved as PNG
    cases.append(Case("inverted_png", "inverted_export.png", "ok", r"image is inverted"))

    ds = _dicom_from("CT_small.dcm")  # two frames: tomosynthesis-like, not one 2D mammogram
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(root / "multi_frame.dcm")
    cases.append(Case("dicom_multi_frame", "multi_frame.dcm", "error", r"holds 2 frames"))

    os.mkfifo(root / "pipe.png")  # opening it for reading would wait for a writer forever
    cases.append(Case("fifo", "pipe.png", "error", r"named pipe \(FIFO\)"))
    _make_socket(root / "sock.png")
    cases.append(Case("socket", "sock.png", "error", r"is a socket"))
    os.symlink("/dev/zero", root / "device.png")  # an endless character device
    cases.append(Case("device", "device.png", "error", r"character device"))
    os.symlink("moved_away.png", root / "dangling.png")
    cases.append(Case("dangling_link", "dangling.png", "error",
                      r"symbolic link to 'moved_away.png', which does not exist"))

    folder_png = root / "scans.png"  # a folder named like an image is walked as a folder
    folder_png.mkdir()
    Image.fromarray(small).save(folder_png / "inside.png")
    cases.append(Case("folder_named_png", "scans.png/inside.png", "ok"))

    odd_dir = root / "dossier patiente é"
    odd_dir.mkdir()
    Image.fromarray(small).save(odd_dir / "sein gauche ñ 乳房.png")
    cases.append(Case("spaces_non_ascii", "dossier patiente é/sein gauche ñ 乳房.png", "ok"))
    return cases
