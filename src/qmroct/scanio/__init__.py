"""Reading OCT scans into the normalised volume every algorithm receives.

``read_scan(path)`` returns a :class:`Volume`: float32 data with axes
(bscan, depth, ascan) plus metadata (spacing in mm, device, laterality, and
how the intensities were stored). Anything that is not a readable OCT volume
raises :class:`ScanError` with the file and the reason.
"""

from qmroct.scanio.volume import ScanError, Volume, read_scan

__all__ = ["ScanError", "Volume", "read_scan"]
