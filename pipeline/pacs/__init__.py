"""The PACS path (`mammoscope pacs`): DICOMweb in (QIDO-RS, WADO-RS), one exam scored per study, a DICOM SR and map
images out (STOW-RS). connection: URL, credentials, retries; each exam is scored by pipeline.serving.exam.score_exam; results: the SR and
Secondary Capture objects (highdicom); run: score / watch, exactly once."""
