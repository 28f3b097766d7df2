"""Reading: image files and DICOM, dataset adapters into one table, folder scans, batch inputs and outputs."""
