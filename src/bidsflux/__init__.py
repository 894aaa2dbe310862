"""bids-flux: MRI studies from a DICOM endpoint to versioned, BIDS-converted DataLad datasets."""

__version__ = "0.1.0"
