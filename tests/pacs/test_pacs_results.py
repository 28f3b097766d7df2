"""Result objects without a PACS: a map's UID names the exam it was scored with, so a study that gains a view gets new
maps instead of new pixels under the UIDs already stored (a PACS keeps the first or refuses the second)."""
from __future__ import annotations

import numpy as np
import pydicom

from pipeline.pacs.results import Algorithm, build_map
from pipeline.serving.exam import ImageResult
from tests._pacs_data import wrap_exam


def test_a_map_uid_changes_with_the_exam_it_was_scored_with_and_only_then(cdd_dir, tmp_path):
    sources = [pydicom.dcmread(p) for p in wrap_exam(cdd_dir, tmp_path / "exam")]
    src = sources[0]
    image = src.pixel_array.astype(np.float32) / 255.0
    result = ImageResult(sample_id=str(src.SOPInstanceUID), laterality="L", view="CC", p_single=0.4, p=0.4,
                         threshold=0.3, call="malignant", prediction_set=None,
                         heatmap=np.linspace(0, 1, image.size, dtype=np.float32).reshape(image.shape), warnings=[])
    algorithm = Algorithm("Mammoscope", "mammoscope-screening v1", ())
    study = str(src.StudyInstanceUID)
    three = [str(d.SOPInstanceUID) for d in sources[:3]]
    four = [str(d.SOPInstanceUID) for d in sources]

    def uid(exam: list[str]) -> str:
        return str(build_map(result, image, src, study, algorithm, 1, exam).SOPInstanceUID)

    assert uid(three) == uid(list(reversed(three)))  # a rerun of the same exam writes the same instance
    assert uid(three) != uid(four)  # a view added since: a new instance, not new pixels under an old UID
