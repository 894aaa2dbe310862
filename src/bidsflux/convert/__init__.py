"""Stage 6, convert: heudiconv + dcm2niix into the study's BIDS dataset.

``run_convert_job`` is the body of the ``convert`` CI job (``bidsflux ci
convert``); the embedded default's local runner runs the very same command.
"""

from ._validator import Validation, validate
from .job import ConvertOutcome, run_convert_job

__all__ = ["ConvertOutcome", "Validation", "run_convert_job", "validate"]
