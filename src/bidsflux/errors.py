"""The error hierarchy: one root, one subclass family per stage.

Every error carries the facts a person needs to act (study UID, URL, path)
and a one-line message that says what failed and what to do.  Only the CLI
prints them; ``exit_code`` is stable per family so scripts can branch on it.
"""

from __future__ import annotations


class BidsfluxError(Exception):
    """Root of every error bids-flux raises on purpose.

    ``transient=True`` marks a failure worth retrying as it is (a service
    unreachable, a timeout): the worker retries it with backoff and the study
    waits in its last durable state.  Anything else is permanent and ends the
    study FAILED with the reason.
    """

    exit_code = 1
    transient = False

    def __init__(self, message: str, *, study: str | None = None, hint: str | None = None,
                 transient: bool | None = None):
        self.study = study
        self.hint = hint
        if transient is not None:
            self.transient = transient
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        if self.study and self.study not in text:
            text = f"study {self.study}: {text}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return text


class SettingsError(BidsfluxError):
    """One or more settings are missing or invalid; all are listed at once."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(
            "invalid settings: " + "; ".join(self.problems),
            hint="fix the environment, .env file or secret files and start again",
        )


class UsageError(BidsfluxError):
    """The command line asked for something that cannot be done."""

    exit_code = 2


class NamingError(BidsfluxError):
    """A template expanded to a value that is empty or invalid for its target."""

    exit_code = 3


class ScannerError(BidsfluxError):
    """The synthetic scanner could not generate or send a study."""

    exit_code = 4


class ReceiveError(BidsfluxError):
    """The DICOM endpoint could not start or keep an instance."""

    exit_code = 5


class IndexingError(BidsfluxError):
    """A session dataset could not be built or amended."""

    exit_code = 6


class StorageError(BidsfluxError):
    """Annexed content could not be pushed to, or verified in, the store."""

    exit_code = 7


class ForgeError(BidsfluxError):
    """The forge refused or failed a repository operation."""

    exit_code = 8


class ConvertError(BidsfluxError):
    """BIDS conversion or validation failed."""

    exit_code = 9


class LedgerError(BidsfluxError):
    """The ledger could not be read or written, or a study is unknown."""

    exit_code = 10


class DeriveError(BidsfluxError):
    """A derivative or QC job could not produce or publish its dataset."""

    exit_code = 11


class SendError(BidsfluxError):
    """Results could not be sent back to a DICOM destination (PACS, the sender)."""

    exit_code = 12


class PhiError(BidsfluxError):
    """The PHI check found identifying data the study does not allow."""

    exit_code = 13
