"""A bootstrapped site on the GitLab double: what the ``gitlab_site`` fixture gives a test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bidsflux.deploy import Sources
from bidsflux.settings import Settings

from .double import GitLabDouble

ROOT = Path(__file__).resolve().parents[2]
SOURCES = Sources(ROOT / "ci-pipelines", ROOT / "deploy" / "project-templates")


@dataclass
class Site:
    double: GitLabDouble
    settings: Settings  # forge_type gitlab, the dicom_bot token, the site's template group
    secrets: Path

    def token(self, name: str) -> str:
        return (self.secrets / name).read_text().strip()


def site_settings(double: GitLabDouble, workdir: Path) -> Settings:
    """Settings of a site on the double, before bootstrap: URL and admin token, fast retries and polls."""
    return Settings().replace(workdir=workdir, forge_type="gitlab", gitlab_url=double.url,
                              gitlab_admin_token=double.admin_token, gitlab_retries=1, gitlab_timeout=10.0,
                              pipeline_poll=0.01, pipeline_poll_max=0.05)
