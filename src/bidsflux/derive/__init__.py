"""Stage 7, derive: derivative and QC datasets made by CI jobs from the study's BIDS dataset.

A derivative (``<group>/derivatives/<name>``) or QC dataset (``<group>/qc/<name>``)
is a DataLad dataset with its inputs as subdatasets (``inputs/bids``, and
``inputs/<need>`` for each derivative it builds on) and its outputs made by
``datalad run``, so every commit says which command made it from which input
commits.  :func:`run_derive_job` is what the CI job (and the local runner)
runs; :mod:`bidsflux.derive.stats` and :mod:`bidsflux.derive.qc` are two small
built-in derivatives (``python -m bidsflux.derive.stats BIDS OUT``).
"""

from __future__ import annotations

from .job import DeriveOutcome, run_derive_job
from .spec import KINDS, DerivativeSpec, builtin_spec, derivative_url, qc_spec, stats_spec

__all__ = ["KINDS", "DerivativeSpec", "DeriveOutcome", "builtin_spec", "derivative_url", "qc_spec",
           "run_derive_job", "stats_spec"]
