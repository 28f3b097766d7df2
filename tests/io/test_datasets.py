"""Adapters on the real mini-MIAS and CBIS-DDSM folders, the official CSVs, a TCIA-style tree and a manifest CSV."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.io.datasets import COLUMNS, density_table, detect_adapter, lesion_table, load_dataset
from pipeline.io.datasets.cbis_ddsm import load_cbis_ddsm
from pipeline.errors import DatasetError


def test_mias_matches_its_manifest(mias_dir):
    table = load_dataset("mias", mias_dir)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(table) == 330 and table["path"].nunique() == 322 and table["patient_id"].nunique() == 161
    manifest = pd.read_csv(mias_dir / "manifest.csv")
    assert list(table["image_id"]) == list(manifest["original_id"])  # same finding order
    assert list(table["laterality"]) == list(manifest["laterality"])
    assert list(table["density"]) == list(manifest["background_tissue"])
    assert table["pathology"].fillna("").tolist() == manifest["pathology"].fillna("").tolist()
    np.testing.assert_array_equal(table["roi_cx"].to_numpy(), manifest["x"].to_numpy(dtype=float))
    np.testing.assert_array_equal(table["roi_cy"].to_numpy(), manifest["y_top_origin"].to_numpy(dtype=float))
    assert table.set_index("image_id").loc[["mdb001", "mdb002"], "patient_id"].nunique() == 1
    assert table.loc[table.image_id == "mdb003", "patient_id"].iloc[0] != table.loc[table.image_id == "mdb002", "patient_id"].iloc[0]
    assert len(density_table(table)) == 322 and len(lesion_table(table)) == 119


def test_mias_with_pgm_beside_info(mias_dir, tmp_path):
    shutil.copy(mias_dir / "Info.txt", tmp_path / "Info.txt")
    from PIL import Image

    Image.open(mias_dir / "images" / "mdb001.png").save(tmp_path / "mdb001.pgm")
    table = load_dataset(None, tmp_path)
    assert list(table["image_id"]) == ["mdb001"] and table["path"].iloc[0].endswith("mdb001.pgm")


def test_mias_reads_a_jpeg_copy_of_the_films(mias_dir, tmp_path):
    shutil.copy(mias_dir / "Info.txt", tmp_path / "Info.txt")
    from PIL import Image

    (tmp_path / "images").mkdir()
    for ref in ("mdb001", "mdb002"):
        Image.open(mias_dir / "images" / f"{ref}.png").convert("L").save(tmp_path / "images" / f"{ref}.jpg")
    table = load_dataset(None, tmp_path)
    assert list(table["image_id"]) == ["mdb001", "mdb002"]
    assert all(p.endswith(".jpg") for p in table["path"]) and table["patient_id"].nunique() == 1


def test_cbis_shared_folder_matches_manifest(cbis_dir):
    table = load_dataset(None, cbis_dir)
    manifest = pd.read_csv(cbis_dir / "manifest.csv")
    assert len(table) == len(manifest) == 10
    merged = table.assign(file=[str(Path(p).relative_to(cbis_dir.resolve())) for p in table["path"]])
    for ours, theirs in zip(merged.itertuples(), manifest.itertuples()):
        assert (ours.file, ours.density, ours.pathology, ours.view, ours.laterality) == (
            theirs.file, theirs.density, theirs.pathology, theirs.view, theirs.laterality
        )
    assert set(table["patient_id"]) == {"P_00173", "P_00820"}


def test_cbis_tcia_tree_layout(cbis_dir, tmp_path):
    """NBIA Data Retriever layout: other folder and file names than the CSV paths."""
    labels = tmp_path / "labels"
    labels.mkdir()
    for csv in (cbis_dir / "labels").glob("*.csv"):
        (labels / csv.name).symlink_to(csv)
    series = tmp_path / "CBIS-DDSM" / "Mass-Test_P_00173_LEFT_CC" / "10-04-2016-DDSM-NA-09887" / "1.000000-full mammogram images-25225"
    series.mkdir(parents=True)
    (series / "1-1.dcm").symlink_to(cbis_dir / "dicom" / "sfm-benign-0_1-130.dcm")
    roi = tmp_path / "CBIS-DDSM" / "Mass-Test_P_00173_LEFT_CC_1" / "10-04-2016-DDSM-NA-1" / "1.000000-ROI mask images-1"
    roi.mkdir(parents=True)
    (roi / "1-1.dcm").write_bytes(b"")
    table = load_cbis_ddsm(tmp_path)
    assert list(table["sample_id"]) == ["Mass-Test_P_00173_LEFT_CC_1"]
    row = table.iloc[0]
    assert row.path == str((series / "1-1.dcm").resolve()) and row.density == "B" and row.pathology == "benign"
    assert (row.laterality, row.view, row.split) == ("L", "CC", "test")


def test_cbis_csv_values_are_mapped(cbis_dir):
    from pipeline.io.datasets.cbis_ddsm import _read_csvs, find_case_csvs

    csvs = find_case_csvs(cbis_dir)
    assert len(csvs) == 4
    raw = _read_csvs(csvs)
    assert len(raw) == 3568 and "breast density" in raw.columns
    assert {"BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"} <= set(raw["pathology"])


def test_cbis_without_images_is_a_clear_error(cbis_dir, tmp_path):
    (tmp_path / "labels").mkdir()
    shutil.copy(next((cbis_dir / "labels").glob("mass_case_description_test*.csv")), tmp_path / "labels")
    with pytest.raises(DatasetError, match="none of the 378"):
        load_cbis_ddsm(tmp_path)


def test_manifest_csv(tmp_images, tmp_path):
    files = tmp_images(4, folder="imgs")
    csv = tmp_path / "my.csv"
    csv.write_text(
        "file,patient_id,density,pathology,x0,y0,x1,y1,site\n"
        f"imgs/{files[0].name},p1,B,malignant,5,6,25,30,north\n"
        f"imgs/{files[1].name},p1,b,,,,,,north\n"
        f"{files[2]},p2,,benign,1,1,9,9,south\n"
        f"imgs/{files[3].name},p3,,,,,,,\n"
    )
    table = load_dataset(None, csv)
    assert detect_adapter(csv) == "manifest"
    assert table["path"].tolist() == [str(f) for f in files]
    assert table["density"].tolist()[:2] == ["B", "B"] and pd.isna(table["density"].iloc[2])
    assert table["pathology"].tolist()[0] == "malignant" and pd.isna(table["pathology"].iloc[1])
    assert table["roi_kind"].tolist()[:1] == ["box"] and pd.isna(table["roi_kind"].iloc[1])
    assert table.loc[0, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].tolist() == [5, 6, 25, 30]
    assert table["site"].tolist()[:3] == ["north", "north", "south"]
    assert len(lesion_table(table)) == 2


def test_manifest_circle_roi_and_errors(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("file,patient_id,pathology,cx,cy,r\na.png,p,M,10,12,4\n")
    table = load_dataset("manifest", csv)
    assert table.loc[0, "roi_kind"] == "circle" and table.loc[0, "pathology"] == "malignant"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.png,1\n")
    with pytest.raises(DatasetError, match=r"missing columns \['file', 'patient_id', 'density or pathology'\]"):
        load_dataset("manifest", bad)
    partial = tmp_path / "partial.csv"
    partial.write_text("file,patient_id,density,x0,y0\na.png,p,A,1,2\n")
    with pytest.raises(DatasetError, match="ROI columns incomplete"):
        load_dataset("manifest", partial)
    odd = tmp_path / "odd.csv"
    odd.write_text("file,patient_id,pathology\na.png,p,maybe\n")
    with pytest.raises(DatasetError, match="maybe"):
        load_dataset("manifest", odd)


def test_folder_adapter_and_unknown_adapter(tmp_images, tmp_path):
    tmp_images(3, folder="plain")
    table = load_dataset(None, tmp_path / "plain")
    assert len(table) == 3 and table["patient_id"].tolist() == ["img00", "img01", "img02"]
    assert table["density"].isna().all()
    with pytest.raises(DatasetError, match="unknown adapter"):
        load_dataset("nope", tmp_path / "plain")


def _write_dicom_like(source: Path, out: Path, pixels: np.ndarray) -> None:
    """A copy of the real DICOM `source` holding `pixels` (uint8, uncompressed)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(source)
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for tag in ("WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    ds.save_as(out, enforce_file_format=True)


def test_cbis_roi_mask_becomes_the_lesion_box(cbis_dir, tmp_path):
    """TCIA's ROI folder holds the lesion crop and the mask under other names: the binary one gives the box, at the
    mammogram's scale; the finding then makes a lesion sample like any other."""
    import pydicom

    from pipeline.samples import load_samples, roi_geometry

    labels = tmp_path / "labels"
    labels.mkdir()
    for csv in (cbis_dir / "labels").glob("*.csv"):
        (labels / csv.name).symlink_to(csv)
    source = cbis_dir / "dicom" / "sfm-benign-0_1-130.dcm"
    series = tmp_path / "CBIS-DDSM" / "Mass-Test_P_00173_LEFT_CC" / "d" / "1.000000-full mammogram images-1"
    series.mkdir(parents=True)
    (series / "1-1.dcm").symlink_to(source)
    roi = tmp_path / "CBIS-DDSM" / "Mass-Test_P_00173_LEFT_CC_1" / "d" / "1.000000-ROI mask images-1"
    roi.mkdir(parents=True)
    height, width = int(pydicom.dcmread(source, stop_before_pixels=True).Rows), int(pydicom.dcmread(source, stop_before_pixels=True).Columns)
    mask = np.zeros((height // 2, width // 2), np.uint8)  # half size: scaled to the mammogram
    mask[500:600, 300:500] = 255
    crop = np.random.default_rng(0).integers(0, 256, (300, 200)).astype(np.uint8)  # a grey lesion crop
    _write_dicom_like(source, roi / "1-1.dcm", crop)
    _write_dicom_like(source, roi / "1-2.dcm", mask)
    table = lesion_table(load_cbis_ddsm(tmp_path))
    assert len(table) == 1 and table["roi_kind"].iloc[0] == "mask"
    row = table.iloc[0].to_dict()
    cx, cy, extent = roi_geometry(row, width, False, height=height)
    assert (cx, cy, extent) == pytest.approx((800.0, 1100.0, 400.0))
    X, errors = load_samples(table, "malignancy", size=64, context=1.5, min_side=64)
    assert X.shape == (1, 64 * 64) and errors.empty
    (roi / "1-2.dcm").unlink()  # only the grey crop left: a clear error row, not a crash
    X, errors = load_samples(table, "malignancy", size=64)
    assert len(X) == 0 and "no binary ROI mask" in errors["error"].iloc[0]
