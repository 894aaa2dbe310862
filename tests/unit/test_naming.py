"""Names from DICOM tags: template expansion, and sanitising of hostile values per target.

The property tests feed arbitrary text (control characters, lone surrogates,
path tricks) into the templates: every result either raises NamingError or
obeys the rules of its target and stays inside the folder it is joined to.
"""

from __future__ import annotations

import ipaddress
import os
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bidsflux.errors import NamingError
from bidsflux.naming import expand, is_uid, sanitize, tag_dictionary

GROUP_TEMPLATE = "{ReferringPhysicianName}/{StudyDescriptionPath[1]}"
S3_TEMPLATE = "bidsflux-{ReferringPhysicianName}/{StudyDescriptionPath[1]}"

GITLAB_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
FILENAME = re.compile(r"^[A-Za-z0-9_.+-]+$")

HOSTILE = [
    "../",
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "$(rm -rf /);|&",
    "`reboot`",
    "x\x00y",
    "\x01\x02\x1b[31m\x7f",
    "line\nbreak\r\ttab",
    "A" * 65536,
    "\udcff",
    "ab\udcffcd",
    "Müller^Zoë",
    "repo.git",
    "repo.atom",
    "-leading-dash",
    "...",
    "．．／ｅｔｃ",  # full-width dots and solidus
    "\u202egnp.exe",
    "a" * 96 + ".git" + "tail",
    "a" * 95 + ".atom" + "tail",
    "1.2.3.4",
    "192.168.0.1",
]


def check_gitlab(result: str, template_slashes: int) -> None:
    segments = result.split("/")
    assert len(segments) == template_slashes + 1, result
    for segment in segments:
        assert segment not in {".", ".."}
        assert GITLAB_SEGMENT.match(segment), segment
        assert not segment.lower().endswith((".git", ".atom")), segment
        assert len(segment) <= 100


def check_s3(result: str, template_slashes: int) -> None:
    segments = result.split("/")
    assert len(segments) == template_slashes + 1, result
    bucket = segments[0]
    assert 3 <= len(bucket) <= 63, bucket
    assert S3_BUCKET.match(bucket), bucket
    assert ".." not in bucket
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        pass
    else:
        pytest.fail(f"bucket {bucket!r} is an IP address")
    for segment in segments:
        assert segment and segment not in {".", ".."}


def check_filename(result: str) -> None:
    assert FILENAME.match(result), result
    assert ".." not in result
    assert "/" not in result
    assert result not in {".", ".."}


def check_contained(result: str) -> None:
    joined = os.path.normpath(os.path.join("/root", result))
    assert joined.startswith("/root/"), joined


def tags(physician: object, description: object) -> dict[str, object]:
    return {"ReferringPhysicianName": physician, "StudyDescription": description}


# -- the default templates -------------------------------------------------------

def test_default_group_template() -> None:
    assert expand(GROUP_TEMPLATE, tags("Doe^Jane", "Doe^Demo"), "gitlab") == "Doe-Jane/Demo"


def test_default_s3_template_lowercases_the_bucket() -> None:
    assert expand(S3_TEMPLATE, tags("Doe^Jane", "Doe^Demo"), "s3") == "bidsflux-doe-jane/demo"


def test_unicode_person_name_folds_to_ascii() -> None:
    assert expand(GROUP_TEMPLATE, tags("Müller^Zoë", "Lab^Études"), "gitlab") == "Muller-Zoe/Etudes"


def test_tag_dictionary_adds_the_description_path_and_blanks_none() -> None:
    result = tag_dictionary({"StudyDescription": "A^B^C", "PatientName": None})
    assert result["StudyDescriptionPath"] == ["A", "B", "C"]
    assert result["PatientName"] == ""
    assert tag_dictionary({})["StudyDescriptionPath"] == [""]


def test_list_value_is_joined_like_a_person_name() -> None:
    assert expand("{Names}", {"Names": ["Doe", "Jane"]}, "gitlab") == "Doe-Jane"


# -- errors name the field ---------------------------------------------------------

def test_missing_tag_names_the_field() -> None:
    with pytest.raises(NamingError, match=r"ReferringPhysicianName") as caught:
        expand(GROUP_TEMPLATE, {"StudyDescription": "Doe^Demo"}, "gitlab", study="1.2.3")
    assert caught.value.study == "1.2.3"
    assert "1.2.3" in str(caught.value)


@pytest.mark.parametrize("empty", ["", None, "^^^", "...", "\x00\x01", "\udcff", "////"])
def test_empty_value_names_the_field(empty: object) -> None:
    with pytest.raises(NamingError, match=r"\{ReferringPhysicianName\}"):
        expand(GROUP_TEMPLATE, tags(empty, "Doe^Demo"), "gitlab")


def test_index_out_of_range_names_the_field() -> None:
    with pytest.raises(NamingError, match=r"StudyDescriptionPath\[1\]"):
        expand(GROUP_TEMPLATE, tags("Doe^Jane", "NoCaretHere"), "gitlab")


def test_empty_literal_segment_is_an_error() -> None:
    with pytest.raises(NamingError, match="empty path segment"):
        expand("{A}//{B}", {"A": "x", "B": "y"}, "gitlab")


def test_malformed_template_is_a_naming_error() -> None:
    with pytest.raises(NamingError, match="malformed"):
        expand("{A", {"A": "x"}, "gitlab")


@pytest.mark.parametrize("bucket_value", ["ab", "1.2.3.4", "10.0.0.1", "!!"])
def test_s3_bucket_rules_enforced(bucket_value: str) -> None:
    with pytest.raises(NamingError):
        expand("{A}/x", {"A": bucket_value}, "s3")


def test_s3_bucket_is_cut_to_63() -> None:
    result = expand("{A}/x", {"A": "b" * 200}, "s3")
    assert result == "b" * 63 + "/x"


# -- hostile values, one by one ------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:24]))
def test_hostile_value_gitlab(value: str) -> None:
    try:
        result = expand(GROUP_TEMPLATE, tags(value, f"Doe^{value}"), "gitlab")
    except NamingError:
        return
    check_gitlab(result, 1)
    check_contained(result)


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:24]))
def test_hostile_value_s3(value: str) -> None:
    try:
        result = expand(S3_TEMPLATE, tags(value, f"Doe^{value}"), "s3")
    except NamingError:
        return
    check_s3(result, 1)
    check_contained(result)


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:24]))
def test_hostile_value_filename(value: str) -> None:
    try:
        result = expand("{StudyInstanceUID}", {"StudyInstanceUID": value}, "filename")
    except NamingError:
        return
    check_filename(result)
    check_contained(result)


def test_path_tricks_are_flattened() -> None:
    assert expand("{A}", {"A": "../../etc/passwd"}, "gitlab") == "etc-passwd"
    assert expand("{A}", {"A": "a/b"}, "filename") == "a-b"
    assert expand("{A}", {"A": "$(rm -rf /);|&"}, "gitlab") == "rm-rf"


def test_long_value_cut_to_segment_limit() -> None:
    result = expand(GROUP_TEMPLATE, tags("A" * 65536, "x^" + "B" * 65536), "gitlab")
    first, second = result.split("/")
    assert first == "A" * 100
    assert second == "B" * 100


@pytest.mark.parametrize("suffix", [".git", ".atom", ".GIT"])
def test_truncation_never_exposes_git_suffix(suffix: str) -> None:
    value = "a" * (100 - len(suffix)) + suffix + "more-text"
    result = sanitize(value, "gitlab")
    assert result
    assert not result.lower().endswith((".git", ".atom")), result
    assert len(result) <= 100


# -- property tests ---------------------------------------------------------------

values = st.one_of(
    st.text(st.characters(), max_size=300),  # every code point class, surrogates and controls included
    st.text(st.characters(codec="ascii"), max_size=150),
    st.text(st.sampled_from("aZ09._-/^\\ \x00\n.git.atom"), max_size=140),
)
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(physician=values, description=values)
@example(physician="a" * 96 + ".git" + "x", description="x^" + "b" * 95 + ".atom" + "y")
@example(physician="..", description="..^..")
def test_property_gitlab(physician: str, description: str) -> None:
    try:
        result = expand(GROUP_TEMPLATE, tags(physician, description), "gitlab")
    except NamingError:
        return
    check_gitlab(result, 1)
    check_contained(result)


@PROPERTY
@given(physician=values, description=values)
@example(physician="1.2.3", description="x^y")
@example(physician="", description="x^y")
def test_property_s3(physician: str, description: str) -> None:
    try:
        result = expand("{ReferringPhysicianName}/{StudyDescriptionPath[1]}", tags(physician, description), "s3")
    except NamingError:
        return
    check_s3(result, 1)
    check_contained(result)


@PROPERTY
@given(value=values)
@example(value="../..")
def test_property_filename(value: str) -> None:
    try:
        result = expand("{StudyInstanceUID}", {"StudyInstanceUID": value}, "filename")
    except NamingError:
        return
    check_filename(result)
    check_contained(result)


@PROPERTY
@given(value=values, target=st.sampled_from(["gitlab", "s3", "filename"]))
@example(value="a" * 96 + ".git" + "tail", target="gitlab")
@example(value="a" * 95 + ".atom" + "tail", target="gitlab")
def test_property_sanitize_is_one_clean_segment(value: str, target: str) -> None:
    result = sanitize(value, target)  # type: ignore[arg-type]
    assert "/" not in result
    assert result not in {".", ".."}
    assert result.isascii() and result.isprintable()
    if not result:
        return
    assert sanitize(result, target) == result  # type: ignore[arg-type]  # idempotent
    if target == "gitlab":
        check_gitlab(result, 0)
    elif target == "filename":
        check_filename(result)
    else:
        assert len(result) <= 63
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", result), result
        assert ".." not in result


# -- UIDs -------------------------------------------------------------------------

@pytest.mark.parametrize("uid", ["1", "1.2.840.10008.1.2", "1." + "2" * 62])
def test_is_uid_accepts(uid: str) -> None:
    assert is_uid(uid)


@pytest.mark.parametrize("uid", ["", "1.", ".1", "1..2", "1.2/3", "../x", "1.a", "1." + "2" * 63,
                                 "1.2\n", "1.2 ", "١.٢"])
def test_is_uid_rejects(uid: str) -> None:
    assert not is_uid(uid)
