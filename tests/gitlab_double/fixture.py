"""pytest fixtures for the GitLab double: a test module uses them with
``pytest_plugins = ["tests.gitlab_double.fixture"]`` (and imports nothing from here).

``gitlab_double``: a running double with one administrator (``root``, token
``double.admin_token``).  ``gitlab_site``: the same after ``bootstrap`` (bots,
tokens in a secrets folder, operations group, project templates, variables),
with settings for a worker that publishes to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bidsflux.deploy import bootstrap

from .double import GitLabDouble
from .site import SOURCES, Site, site_settings


@pytest.fixture
def gitlab_double(tmp_path: Path) -> Iterator[GitLabDouble]:
    double = GitLabDouble(tmp_path / "gitlab").start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def gitlab_site(gitlab_double: GitLabDouble, tmp_path: Path) -> Site:
    settings = site_settings(gitlab_double, tmp_path / "work")
    secrets = tmp_path / "secrets"
    report = bootstrap(settings, sources=SOURCES, secrets_dir=secrets)
    assert not report.failed, [s.line() for s in report.steps]
    settings = settings.replace(gitlab_dicom_bot_token=(secrets / "gitlab_dicom_bot_token").read_text().strip(),
                                gitlab_template_group=f"{settings.gitlab_ops_group}/project-templates")
    return Site(gitlab_double, settings, secrets)
