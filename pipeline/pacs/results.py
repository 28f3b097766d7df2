"""What goes back to the PACS, built with highdicom: one TID 1500 Measurement Report (Comprehensive SR) per exam and
one Secondary Capture map per image, each in a new series of the exam's study.

Patient and study attributes reach these objects only through highdicom copying them from the source images
(`ComprehensiveSR(evidence=...)`, `SCImage.from_ref_dataset`), as DICOM requires for them to belong to the study;
nothing here reads, logs or returns them. UIDs are derived from the study, the algorithm and the source instances
(`pydicom.uid.generate_uid(entropy_srcs=...)`), so a rerun after a crash writes the very same instances again instead
of new ones: the PACS keeps one copy (docs/pacs.md, "Exactly once").
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["ALGORITHM_NAME", "DISCLAIMER", "MAP_SERIES_NUMBER", "SR_SERIES_NUMBER", "MAP_MAX_SIDE", "Algorithm",
           "algorithm_of", "result_uid", "build_report", "build_map", "report_algorithm", "CODES"]

ALGORITHM_NAME = "Mammoscope"
DISCLAIMER = "Mammoscope: decision support, not a diagnosis"
REFUSED_PREFIX = "not scored: instance "  # the SR comment naming an MG instance that could not be read
MAP_TEXT = "NOT FOR DIAGNOSIS - Mammoscope decision-support map"
MAP_SERIES_NUMBER, SR_SERIES_NUMBER = 9701, 9702  # high numbers: viewers list them after the acquired series
MAP_MAX_SIDE = 1024  # pixels of a map's long side: a display aid, small enough to send quickly
# highdicom logs a source's patient name verbatim when it doubts its format: its log lines never reach ours
logging.getLogger("highdicom").setLevel(logging.CRITICAL)
SCHEME = "99MMSC"  # private coding scheme (PS3.16 8.2: "99" prefix) for concepts without a standard code


def _code(value: str, meaning: str, scheme: str = SCHEME) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


class CODES:
    """The coded concepts of the report (standard codes where DICOM has one)."""

    @staticmethod
    def get() -> dict[str, Any]:
        from pydicom.sr.codedict import codes

        return {
            "probability": codes.DCM.ProbabilityOfCancer,  # (111047, DCM): the CAD probability of malignancy
            "probability_single": _code("P-SINGLE", "Probability of cancer, image alone"),
            "threshold": _code("THRESHOLD", "Operating point threshold"),
            "sensitivity": _code("SENS", "Sensitivity at operating point (cross-validated)"),
            "sensitivity_low": _code("SENS-LO", "Sensitivity 95% CI lower bound"),
            "sensitivity_high": _code("SENS-HI", "Sensitivity 95% CI upper bound"),
            "specificity": _code("SPEC", "Specificity at operating point (cross-validated)"),
            "specificity_low": _code("SPEC-LO", "Specificity 95% CI lower bound"),
            "specificity_high": _code("SPEC-HI", "Specificity 95% CI upper bound"),
            "call": _code("CALL", "Screening call at operating point"),
            "set_member": _code("SET", "Prediction set member"),
            "density": codes.SCT.BreastComposition,
            "density_set_member": _code("DENSITY-SET", "Breast density prediction set member"),
            "comment": codes.DCM.Comment,
            "breast": codes.SCT.Breast,
            "L": codes.SCT.Left, "R": codes.SCT.Right,
            "unit": codes.UCUM.NoUnits,
            "procedure": codes.SCT.Mammography,
        }


def class_code(cls: str, kind: str = "screening") -> Any:
    """A model class as a coded value (private scheme; the meaning is the class name, the value S-/D-<class> cut to
    the 16 characters a code value may hold)."""
    return _code(f"{kind[0].upper()}-{cls}"[:16], str(cls))


def density_probability_code(cls: str) -> Any:
    return _code(f"P-DENSITY-{cls}"[:16], f"Probability of breast density {cls}")


@dataclass(frozen=True)
class Algorithm:
    """Which models scored an exam: `version` is the key of "already scored" (docs/pacs.md)."""

    name: str
    version: str
    parameters: tuple[str, ...]


def algorithm_of(result: Any) -> Algorithm:
    """The algorithm identification of an ExamResult (screening model name/version, density model if any)."""
    m = result.model
    version = f"{m['name']}/{m['version']}"
    params = [f"screening={m['name']}/{m['version']}"]
    density = (result.density or {}).get("model")
    if density:
        version += f"+{density['name']}/{density['version']}"
        params.append(f"density={density['name']}/{density['version']}")
    return Algorithm(ALGORITHM_NAME, version, tuple(params))


def algorithm_of_models(models: Any) -> Algorithm:
    """The Algorithm the loaded `models` ({task: Predictor}) will write (known before scoring anything)."""
    screening = next(m for m in models.values() if m.task_spec.levels)
    density = next((m for m in models.values() if m.task_spec.density_labels), None)
    result = type("R", (), {"model": {"name": screening.name, "version": screening.version},
                            "density": None if density is None else
                            {"model": {"name": density.name, "version": density.version}}})()
    return algorithm_of(result)


def result_uid(*parts: str) -> str:
    """A UID that is a pure function of `parts` (the same study, algorithm and sources give the same UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["mammoscope-pacs", *map(str, parts)]))


def _measure(name: Any, value: float | None, unit: Any) -> list[Any]:
    import highdicom as hd

    if value is None or not np.isfinite(float(value)):
        return []
    return [hd.sr.Measurement(name=name, value=float(value), unit=unit)]


def _operating(c: dict, card: dict, level: str) -> list[Any]:
    """Sensitivity / specificity with their 95% CIs at this level's operating point (the card summary of
    pipeline.serving.exam: ``card["levels"][level]["sensitivity"] = {"value", "low", "high"}``)."""
    out = []
    entry = ((card or {}).get("levels") or {}).get(level) or {}
    for what in ("sensitivity", "specificity"):
        m = entry.get(what)
        if isinstance(m, dict) and m.get("value") is not None:
            out += _measure(c[what], m["value"], c["unit"])
            out += _measure(c[f"{what}_low"], m.get("low"), c["unit"])
            out += _measure(c[f"{what}_high"], m.get("high"), c["unit"])
    return out


def _texts(c: dict, lines: Iterable[str]) -> list[Any]:
    import highdicom as hd

    return [hd.sr.TextContentItem(name=c["comment"], value=str(line)[:10000],
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS) for line in lines if line]


def _group(c: dict, algorithm: Algorithm, identifier: str, uid: str, sources: Sequence[Any],
           measurements: list[Any], evaluations: list[Any], texts: list[str], laterality: str | None = None) -> Any:
    import highdicom as hd

    sites = [hd.sr.FindingSite(c["breast"], laterality=c[laterality])] if laterality in ("L", "R") else None
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
        algorithm_id=hd.sr.AlgorithmIdentification(algorithm.name, algorithm.version, list(algorithm.parameters)),
        finding_sites=sites,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
    )
    group[0].ContentSequence.extend(_texts(c, texts))  # TID 1501 qualitative evaluations may be TEXT
    return group


def _evaluation(name: Any, value: Any) -> Any:
    import highdicom as hd

    return hd.sr.QualitativeEvaluation(name=name, value=value)


def _density_items(c: dict, probabilities: dict[str, float], call: str | None, members: Sequence[str] | None,
                   label: str | None = None) -> tuple[list[Any], list[Any], list[str]]:
    """(measurements, evaluations, comments) of a density result: a probability per class, the call, the set."""
    measures = []
    for cls, p in probabilities.items():
        measures += _measure(density_probability_code(cls), p, c["unit"])
    evals = [_evaluation(c["density"], class_code(call, "density"))] if call else []
    evals += [_evaluation(c["density_set_member"], class_code(m, "density")) for m in members or []]
    return measures, evals, [f"breast density prediction set: {label}"] if label else []


def _exam_density(c: dict, density: dict | None) -> tuple[list[Any], list[Any], list[str]]:
    if not density:
        return [], [], []
    return _density_items(c, dict(density["probabilities"]), density.get("call"), density.get("prediction_set"))


def _image_density(c: dict, outputs: dict) -> tuple[list[Any], list[Any], list[str]]:
    """The density columns of an image's results row (`density_p_<class>`, `density_call`, `density_set`)."""
    probabilities = {k[len("density_p_"):]: float(v) for k, v in outputs.items()
                     if k.startswith("density_p_") and v is not None}
    if not probabilities:
        return [], [], []
    label = outputs.get("density_set")
    return _density_items(c, probabilities, outputs.get("density_call"), None, None if label is None else str(label))


def build_report(result: Any, sources: Sequence[Any], study_uid: str, algorithm: Algorithm) -> Any:
    """The exam's TID 1500 Measurement Report as a highdicom ComprehensiveSR: one measurement group for the exam,
    one per breast and one per image (probability, operating point and its cross-validated sensitivity /
    specificity with CIs, call, prediction set, density, warnings), every source image in the image library."""
    import highdicom as hd

    c = CODES.get()
    card = result.model.get("card") or {}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    source_of = {im.sample_id: by_uid[im.sample_id] for im in result.images}
    groups = []
    e = result.exam
    dm, de, dt = _exam_density(c, result.density)
    measures = _measure(c["probability"], e.p, c["unit"]) + _measure(c["threshold"], e.threshold, c["unit"]) \
        + _operating(c, card, "exam") + dm
    evals = ([_evaluation(c["call"], class_code(e.call))] if e.call is not None else []) + de
    texts = [DISCLAIMER, f"exam: {len(result.images)} image(s), views {', '.join(e.views) or 'unknown'}; "
             f"most suspicious breast: {_side(e.most_suspicious_breast)}"] + dt + \
        [f"not scored: {err}" for err in result.errors]  # errors from run._read start "instance <UID>: "
    groups.append(_group(c, algorithm, "exam", result_uid(study_uid, algorithm.version, "exam"),
                         [source_of[im.sample_id] for im in result.images], measures, evals, texts))
    by_breast: dict[str, list[Any]] = {}
    for im in result.images:
        by_breast.setdefault(str(im.breast_id), []).append(source_of[im.sample_id])
    for b in result.breasts:
        measures = _measure(c["probability"], b.p, c["unit"]) + _measure(c["threshold"], b.threshold, c["unit"]) \
            + _operating(c, card, "breast")
        evals = [_evaluation(c["call"], class_code(b.call))] if b.call is not None else []
        texts = [f"breast {_side(b.id)}: {b.n_images} image(s), views {', '.join(b.views) or 'unknown'}"]
        groups.append(_group(c, algorithm, f"breast {_side(b.id)}"[:64], result_uid(study_uid, algorithm.version, b.id),
                             by_breast.get(b.id, []), measures, evals, texts, b.laterality))
    for im in result.images:
        measures = _measure(c["probability"], im.p, c["unit"]) \
            + _measure(c["probability_single"], im.p_single, c["unit"]) \
            + _measure(c["threshold"], im.threshold, c["unit"]) + _operating(c, card, "image")
        evals = [_evaluation(c["call"], class_code(im.call))] if im.call is not None else []
        evals += [_evaluation(c["set_member"], class_code(m)) for m in im.prediction_set or []]
        dm, de, dt = _image_density(c, im.outputs)
        texts = [f"image: laterality {im.laterality or 'unknown'}, view {im.view or 'unknown'}"] + dt + \
            [f"warning: {w}" for w in im.warnings]
        groups.append(_group(c, algorithm, "image", result_uid(study_uid, algorithm.version, im.sample_id),
                             [source_of[im.sample_id]], measures + dm, evals + de, texts, im.laterality))
    device = hd.sr.ObserverContext(
        observer_type=_device_code(),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", algorithm.version), name=algorithm.name, model_name=algorithm.version[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=c["procedure"], imaging_measurements=groups,
        referenced_images=_library(list(source_of.values())))
    source_uids = sorted(source_of)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's value checks may quote patient attributes
        return _comprehensive_sr(
            evidence=list(source_of.values()), content=report[0],
            series_instance_uid=result_uid(study_uid, algorithm.version, "sr-series"), series_number=SR_SERIES_NUMBER,
            sop_instance_uid=result_uid(study_uid, algorithm.version, "sr", *source_uids), instance_number=1,
            manufacturer=ALGORITHM_NAME, is_complete=True, is_final=False, is_verified=False,
            series_description=DISCLAIMER[:64])


def _comprehensive_sr(**kwargs: Any) -> Any:
    import highdicom as hd

    return hd.sr.ComprehensiveSR(**kwargs)


def _library(sources: list[Any]) -> list[Any] | None:
    """The sources for the TID 1600 image library when highdicom can describe each (an MG image needs its Imager
    Pixel Spacing); else None: every source is still referenced by its measurement groups and the SR's evidence."""
    import highdicom as hd

    try:
        for ds in sources:
            hd.sr.ImageLibraryEntryDescriptors(ds)
    except (AttributeError, ValueError, TypeError):
        return None
    return sources


def _device_code() -> Any:
    from pydicom.sr.codedict import codes

    return codes.DCM.Device


def _side(breast_id: str | None) -> str:
    """The side of a breast id (exam|L -> L); an image-of-its-own breast -> its image."""
    if not breast_id:
        return "unknown"
    tail = str(breast_id).rsplit("|", 1)[-1]
    return tail if tail in ("L", "R") else f"image {tail}"


def report_algorithm(dataset: Any) -> tuple[str | None, str | None, set[str]]:
    """(algorithm name, version, SOP instance UIDs it read: referenced or named as refused) of an SR dataset (or its DICOM JSON metadata read
    by pydicom): walks the content tree, reads no patient value."""
    name = version = None
    refs: set[str] = set()
    stack = list(getattr(dataset, "ContentSequence", []) or [])
    while stack:
        item = stack.pop()
        concept = getattr(item, "ConceptNameCodeSequence", None)
        code = concept[0].CodeValue if concept else None
        scheme = concept[0].CodingSchemeDesignator if concept else None
        if (code, scheme) == ("111001", "DCM"):
            name = getattr(item, "TextValue", name)
        elif (code, scheme) == ("111003", "DCM"):
            version = getattr(item, "TextValue", version)
        for ref in getattr(item, "ReferencedSOPSequence", []) or []:
            refs.add(str(ref.ReferencedSOPInstanceUID))
        text = str(getattr(item, "TextValue", "") or "")
        if text.startswith(REFUSED_PREFIX):  # an instance read and refused counts as read (not retried forever)
            refs.add(text[len(REFUSED_PREFIX):].split(":", 1)[0].strip())
        stack.extend(getattr(item, "ContentSequence", []) or [])
    return name, version, refs


def _orientation(source: Any) -> tuple[str, str]:
    """The source image's Patient Orientation (mammograms carry it, e.g. ('A', 'R')); ('A', 'F') when absent."""
    value = list(getattr(source, "PatientOrientation", []) or [])
    allowed = {"A", "P", "L", "R", "H", "F"}
    if len(value) == 2 and all(v and set(str(v)) <= allowed for v in value):
        return str(value[0]), str(value[1])
    return "A", "F"


def map_pixels(image: np.ndarray, heat: np.ndarray, lines: Sequence[str], max_side: int = MAP_MAX_SIDE) -> np.ndarray:
    """RGB uint8 (h, w, 3): the image with its heat map blended in (pipeline.serving.screening.overlay_rgb), at most
    `max_side` pixels on the long side, with `lines` burned in at the top on a black band."""
    from PIL import Image, ImageDraw, ImageFont

    from pipeline.serving.screening import overlay_rgb

    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(np.asarray(image, np.float32), mode="F").resize(size, Image.BILINEAR))
    small_heat = np.asarray(Image.fromarray(np.asarray(heat, np.float32), mode="F").resize(size, Image.BILINEAR))
    rgb = Image.fromarray(overlay_rgb(np.clip(small, 0, 1), np.clip(small_heat, 0, 1)))
    draw = ImageDraw.Draw(rgb)
    font_size = max(10, size[0] // 40)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    band = int(font_size * 1.4) * len(lines) + 4
    draw.rectangle([0, 0, size[0], band], fill=(0, 0, 0))
    for k, line in enumerate(lines):
        draw.text((4, 2 + k * int(font_size * 1.4)), line, fill=(255, 255, 0), font=font)
    return np.asarray(rgb, dtype=np.uint8)


def build_map(image_result: Any, image: np.ndarray, source: Any, study_uid: str, algorithm: Algorithm,
              number: int, exam_sources: Sequence[str] = ()) -> Any:
    """The Secondary Capture of one image's map: "not for diagnosis" burned in, referencing its source image.
    `exam_sources`: the SOP Instance UIDs of every image scored with it; they enter its UID (as the SR's), since
    the p burned in reads the exam's other views: a study that gains a view gets new maps, not new pixels under
    old UIDs (which a PACS keeps or refuses)."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    p = image_result.p
    lines = [MAP_TEXT, f"{algorithm.version[:60]}  p={p:.3f}  call={image_result.call or '-'}"]
    pixels = map_pixels(image, image_result.heatmap, lines)
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    laterality = image_result.laterality if image_result.laterality in ("L", "R") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's value checks may quote patient attributes
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=result_uid(study_uid, algorithm.version, "map-series"),
            series_number=MAP_SERIES_NUMBER,
            sop_instance_uid=result_uid(study_uid, algorithm.version, "map", str(source.SOPInstanceUID),
                                        *sorted(map(str, exam_sources))),
            instance_number=number, manufacturer=ALGORITHM_NAME, laterality=laterality,
            patient_orientation=_orientation(source))
    # attributes of the SC Image and General Image modules highdicom leaves to the caller
    sc.SeriesDescription = "Mammoscope maps: not for diagnosis"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{DISCLAIMER}; heat map of {algorithm.version}"
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = "tile malignancy probability map blended over the source image, downsampled"
    return sc
