"""DICOM reading on the real CBIS-DDSM files and on files derived from them (MONOCHROME1, windows, VOI LUT)."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from features.breast import breast_mask
from pipeline.errors import ImageReadError
from pipeline.io.imageio import read_image

CBIS_FILE = "dicom/sfm-benign-0_1-130.dcm"  # left CC, MONOCHROME2, RLE


@pytest.fixture(scope="module")
def cbis_reads(cbis_dir: Path) -> dict[str, tuple[np.ndarray, object]]:
    """Every shared CBIS-DDSM DICOM read once (downsampled by 8 to keep memory low)."""
    out = {}
    for path in sorted((cbis_dir / "dicom").glob("*.dcm")):
        image, meta = read_image(path)
        out[f"dicom/{path.name}"] = (image[::8, ::8].copy(), meta)
    return out


def test_all_cbis_dicoms_read_bright_with_manifest_laterality_and_view(cbis_dir, cbis_reads):
    manifest = pd.read_csv(cbis_dir / "manifest.csv").drop_duplicates("file")
    assert len(manifest) == 8 and set(manifest["file"]) == set(cbis_reads)
    for row in manifest.itertuples():
        small, meta = cbis_reads[row.file]
        assert meta.format == "dicom" and meta.original_shape == (row.rows, row.cols)
        assert meta.laterality == row.laterality and meta.view == row.view
        assert small.dtype == np.float32 and 0.0 <= small.min() and small.max() <= 1.0
        mask = breast_mask(small)
        assert 0.08 < mask.mean() < 0.7, row.file
        assert small[mask].mean() > 3 * small[~mask].mean() + 0.05, f"{row.file}: breast is not bright"


def test_meta_has_no_patient_identifying_values(cbis_dir, cbis_reads):
    ds = pydicom.dcmread(cbis_dir / CBIS_FILE, stop_before_pixels=True)
    text = repr(cbis_reads[CBIS_FILE][1].to_dict())
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, ""))
        assert value and value not in text
    assert not {"patient_id", "patient_name", "birth_date", "accession", "institution"} & set(
        cbis_reads[CBIS_FILE][1].to_dict()
    )
    # the study UID is read for grouping views into exams only: never shown (repr) nor written (to_dict)
    meta = cbis_reads[CBIS_FILE][1]
    assert meta.study_uid == str(ds.StudyInstanceUID) and meta.study_uid not in repr(meta)


# The crop has no background, so the display-chain tests below read it without the pixel polarity check
# (tests/test_polarity.py checks polarity on whole mammograms).
@pytest.fixture(scope="module")
def crop_ds(cbis_dir: Path) -> Dataset:
    """A 256 x 256 uncompressed crop of a real CBIS-DDSM mammogram (breast tissue at the chest wall)."""
    ds = pydicom.dcmread(cbis_dir / CBIS_FILE)
    crop = np.ascontiguousarray(ds.pixel_array[2000:2256, 0:256])
    ds.set_pixel_data(crop, photometric_interpretation="MONOCHROME2", bits_stored=16)
    return ds


def _write(ds: Dataset, path: Path, **changes) -> Path:
    ds = copy.deepcopy(ds)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_crop_copy_reads_as_stretched_stored_values(crop_ds, tmp_path):
    image, meta = read_image(_write(crop_ds, tmp_path / "m2.dcm"), polarity=False)
    stored = crop_ds.pixel_array.astype(np.float64)
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert meta.transfer_syntax == "Explicit VR Little Endian" and not meta.inverted


def test_monochrome1_reads_like_its_monochrome2_original(crop_ds, tmp_path):
    original, _ = read_image(_write(crop_ds, tmp_path / "m2.dcm"), polarity=False)
    inverted = copy.deepcopy(crop_ds)
    inverted.set_pixel_data(65535 - crop_ds.pixel_array, photometric_interpretation="MONOCHROME1", bits_stored=16)
    image, meta = read_image(_write(inverted, tmp_path / "m1.dcm", PresentationLUTShape="INVERSE"), polarity=False)
    assert meta.photometric == "MONOCHROME1" and meta.inverted
    np.testing.assert_allclose(image, original, atol=1e-6)
    image_no_shape, _ = read_image(_write(inverted, tmp_path / "m1b.dcm"), polarity=False)  # MONOCHROME1, no shape
    np.testing.assert_allclose(image_no_shape, original, atol=1e-6)


def test_inverse_presentation_lut_shape_inverts_monochrome2(crop_ds, tmp_path):
    original, _ = read_image(_write(crop_ds, tmp_path / "m2.dcm"), polarity=False)
    image, meta = read_image(_write(crop_ds, tmp_path / "inv.dcm", PresentationLUTShape="INVERSE"), polarity=False)
    assert meta.inverted
    np.testing.assert_allclose(image, 1.0 - original, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID"])
def test_window_centre_width_is_applied(crop_ds, tmp_path, function):
    stored = crop_ds.pixel_array.astype(np.float64)
    centre, width = float(np.median(stored)), float(np.percentile(stored, 90) - np.percentile(stored, 10))
    path = _write(crop_ds, tmp_path / "win.dcm", WindowCenter=round(centre), WindowWidth=round(width), VOILUTFunction=function)
    image, meta = read_image(path, polarity=False)
    c, w = round(centre), round(width)
    if function == "LINEAR":
        expected = np.clip((stored - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
        assert (image == 0).any() and (image == 1).any()  # the window clips both tails
    else:
        expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - c) / w))
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert meta.voi == f"window {function}"


def test_voi_lut_sequence_is_applied(crop_ds, tmp_path):
    stored = crop_ds.pixel_array.astype(np.int64)
    first, n = int(np.percentile(stored, 5)), 4096
    lut = (np.sqrt(np.linspace(0.0, 1.0, n)) * 65535).astype(np.uint16)  # a gamma-like curve
    item = Dataset()
    item.add_new(0x00283002, "US", [n, first, 16])  # LUT Descriptor
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    ds = copy.deepcopy(crop_ds)
    ds.VOILUTSequence = Sequence([item])
    image, meta = read_image(_write(ds, tmp_path / "voilut.dcm"), polarity=False)
    expected = lut[np.clip(stored - first, 0, n - 1)] / 65535.0
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert meta.voi == "VOI LUT sequence"


def test_pydicom_mr_small_window_and_modality_warning():
    path = get_testdata_file("MR_small.dcm")  # shipped with pydicom, no download
    ds = pydicom.dcmread(path)
    with pytest.warns(UserWarning, match="modality is MR"):
        image, meta = read_image(path)
    stored = ds.pixel_array.astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    # signed 16-bit output range of the window, then scaled to [0, 1]
    np.testing.assert_allclose(image, np.clip((stored - (c - 0.5)) / (w - 1) + 0.5, 0, 1), atol=1e-5)
    assert meta.voi == "window LINEAR" and meta.modality == "MR"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_syntaxes_decode_like_the_uncompressed_file(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference, _ = read_image(get_testdata_file("MR_small.dcm"))
        image, meta = read_image(get_testdata_file(name))
    np.testing.assert_allclose(image, reference, atol=1e-6)
    assert meta.transfer_syntax != "Explicit VR Little Endian"


def test_laterality_from_frame_anatomy_and_view_from_view_code(crop_ds, tmp_path):
    ds = copy.deepcopy(crop_ds)
    del ds.Laterality
    del ds.PatientOrientation
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    group = Dataset()
    group.FrameAnatomySequence = Sequence([anatomy])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399162004", "SCT", "medio-lateral oblique"
    ds.ViewCodeSequence = Sequence([code])
    _, meta = read_image(_write(ds, tmp_path / "enh.dcm"))
    assert meta.laterality == "R" and meta.view == "MLO"
    _, meta = read_image(_write(ds, tmp_path / "il.dcm", ImageLaterality="L", ViewPosition="CC"))
    assert meta.laterality == "L" and meta.view == "CC"


def test_for_processing_warns(crop_ds, tmp_path):
    path = _write(crop_ds, tmp_path / "raw.dcm", PresentationIntentType="FOR PROCESSING")
    with pytest.warns(UserWarning, match="FOR PROCESSING"):
        _, meta = read_image(path)
    assert meta.presentation_intent == "FOR PROCESSING" and meta.warnings


def test_dicom_without_pixel_data_is_refused():
    path = get_testdata_file("rtplan.dcm")
    with pytest.raises(ImageReadError, match="no pixel data") as info:
        read_image(path)
    assert info.value.path == str(path) and info.value.hint


def test_truncated_pixel_data_is_refused():
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(get_testdata_file("MR_truncated.dcm"))


def test_text_renamed_dcm_is_refused(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is a text file, not a DICOM\n" * 10)
    with pytest.raises(ImageReadError, match="not a DICOM file") as info:
        read_image(path)
    assert "notes.dcm" in str(info.value)


def test_transfer_syntax_without_decoder_names_it(crop_ds, tmp_path):
    from pydicom.encaps import encapsulate

    ds = copy.deepcopy(crop_ds)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no Python decoder exists
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="MPEG2"):
        read_image(path)


def test_missing_decoder_names_the_pip_package(monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ImageReadError, match="pip install pylibjpeg pylibjpeg-openjpeg"):
        read_image(get_testdata_file("MR_small_jp2klossless.dcm"))


def test_dicom_bomb_is_refused_from_the_header(crop_ds, tmp_path):
    path = _write(crop_ds, tmp_path / "huge.dcm", Rows=60000, Columns=60000)
    with pytest.raises(ImageReadError, match="huge.dcm: image is 60000 x 60000"):
        read_image(path)
