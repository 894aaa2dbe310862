"""Stage 6, convert: heudiconv + dcm2niix into the study's BIDS dataset.

The jobs of the bids pipeline (``ci-pipelines/bids.yml``) live in
:mod:`.job`: GitLab's runners and the embedded default's local runner run the
same ``bidsflux ci ...`` commands.
"""

from ._validator import Validation, validate
from .job import CheckOutcome, ConvertOutcome, run_convert_job

__all__ = ["CheckOutcome", "ConvertOutcome", "Validation", "run_convert_job", "validate"]
