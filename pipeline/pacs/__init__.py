"""The PACS path (`mammoscope pacs`): DICOMweb in (QIDO-RS, WADO-RS), one exam scored per study, a DICOM SR and map
images out (STOW-RS). connection: URL, credentials, retries; scoring: the one exam-scoring call; results: the SR and
Secondary Capture objects (highdicom); run: score / watch, exactly once."""
