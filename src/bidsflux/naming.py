"""Names from DICOM tags: template expansion and sanitising per target.

Tag values are hostile until sanitised: they become GitLab paths, bucket
names and file names.  Templates are ``str.format`` style over a tag
dictionary (compatible with the original BIDS-flux:
``{ReferringPhysicianName}/{StudyDescriptionPath[1]}``); every *value* is
sanitised for its target before it is put into the template, so a value can
never add a path separator, ``..``, or a control character.  An empty or
invalid result raises :class:`NamingError`, which sends the study to
quarantine; there is no silent default place.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal

from .errors import NamingError

Target = Literal["gitlab", "s3", "filename"]

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_GITLAB_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_S3_BAD = re.compile(r"[^a-z0-9.-]+")
_FILENAME_BAD = re.compile(r"[^A-Za-z0-9_.+-]+")
MAX_SEGMENT = {"gitlab": 100, "s3": 63, "filename": 120}


def is_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (digits and dots, at most 64)."""
    # fullmatch: ``$`` alone would accept a trailing newline ("1.2\n").
    return 0 < len(value) <= 64 and bool(UID_RE.fullmatch(value))


def _ascii(value: str) -> str:
    normalised = unicodedata.normalize("NFKD", value)
    return normalised.encode("ascii", "ignore").decode("ascii")


def sanitize(value: str, target: Target) -> str:
    """Make one value safe as a single path segment for ``target``.

    Returns ``""`` when nothing usable is left; callers decide that this is
    an error.  DICOM person names (``Doe^Jane``) become ``Doe-Jane``.
    """
    text = _ascii(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    if target == "s3":
        text = _S3_BAD.sub("-", text.lower())
        text = re.sub(r"\.{2,}", ".", text)
        text = text.strip(".-")
    elif target == "gitlab":
        text = _GITLAB_BAD.sub("-", text)
        text = re.sub(r"\.{2,}", ".", text)
        text = re.sub(r"-{2,}", "-", text)
        text = text.strip("._-")
    else:
        text = _FILENAME_BAD.sub("-", text)
        text = re.sub(r"\.{2,}", ".", text)
        text = text.strip(".-")
    text = text[: MAX_SEGMENT[target]].strip(".-_" if target != "s3" else ".-")
    if target == "gitlab":
        # After truncating: cutting at 100 characters can expose a ".git" ending.
        while text.lower().endswith((".git", ".atom")):
            text = text.rsplit(".", 1)[0].rstrip("._-")
    return text


class _SanitisingFormatter(string.Formatter):
    """A formatter that sanitises each looked-up value before insertion."""

    def __init__(self, target: Target):
        self.target = target
        self.used: list[str] = []

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        try:
            obj, first = super().get_field(field_name, args, kwargs)
        except KeyError as exc:
            raise NamingError(f"template field {{{field_name}}}: tag {exc.args[0]} is missing") from exc
        except IndexError as exc:
            raise NamingError(f"template field {{{field_name}}}: the tag has no such part") from exc
        self.used.append(str(first))
        if isinstance(obj, (list, tuple)):
            obj = "^".join(str(part) for part in obj)
        cleaned = sanitize(str(obj), self.target)
        if not cleaned:
            raise NamingError(
                f"template field {{{field_name}}} is empty after sanitising (value {str(obj)[:40]!r})"
            )
        return cleaned, first


def tag_dictionary(tags: Mapping[str, Any]) -> dict[str, Any]:
    """Add the derived keys the templates may use (``StudyDescriptionPath``)."""
    result = {key: ("" if value is None else value) for key, value in tags.items()}
    result["StudyDescriptionPath"] = str(result.get("StudyDescription", "")).split("^")
    return result


def expand(template: str, tags: Mapping[str, Any], target: Target, *, study: str | None = None) -> str:
    """Expand ``template`` over ``tags`` into a ``/``-separated path valid for ``target``.

    Literal ``/`` in the template separates segments; no value can add one.
    For ``s3`` the first segment is a bucket name and must have 3-63 characters.
    """
    formatter = _SanitisingFormatter(target)
    try:
        expanded = formatter.format(template, **tag_dictionary(tags))
    except NamingError as exc:
        raise NamingError(str(exc), study=study, hint="check the tags or the template") from None
    except (ValueError, AttributeError) as exc:
        raise NamingError(f"template {template!r} is malformed: {exc}", study=study) from exc
    segments = expanded.split("/")
    checked: list[str] = []
    for segment in segments:
        cleaned = sanitize(segment, target)
        if not cleaned or cleaned in {".", ".."}:
            raise NamingError(
                f"template {template!r} gives an empty path segment", study=study,
                hint="every segment of the template needs a non-empty value",
            )
        checked.append(cleaned)
    if target == "s3":
        bucket = checked[0]
        if not 3 <= len(bucket) <= 63 or re.fullmatch(r"[0-9.]+", bucket):
            raise NamingError(
                f"bucket name {bucket!r} from {template!r} breaks S3 rules (3-63 characters, not an IP)",
                study=study,
            )
    return "/".join(checked)


IDENTITY_TAGS = frozenset({"PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientAddress",
                           "PatientTelephoneNumbers", "AccessionNumber"})


def identity_fields(template: str) -> set[str]:
    """Tags in ``template`` that carry patient identity (they end up in paths people can read)."""
    used = set()
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name:
            used.add(re.split(r"[.\[]", field_name, maxsplit=1)[0])
    return used & IDENTITY_TAGS
