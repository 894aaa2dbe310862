"""Stage 7, derive: derivative containers (MRIQC, fMRIPrep, ...) as pipeline jobs.

Not built yet; the derivatives pipeline arrives with the CI templates.
"""
