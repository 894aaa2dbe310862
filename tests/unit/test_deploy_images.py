"""containers/: the images, their Dockerfiles (hadolint), the CI template that builds them, and the build script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
DOCKERFILES = sorted(CONTAINERS.glob("*/Dockerfile"))


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: install the pinned packages of requirements.lock"
    return found


def images() -> dict[str, tuple[Path, str]]:
    """containers/images.txt: name -> (Dockerfile, target or "-")."""
    found = {}
    for line in (CONTAINERS / "images.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, dockerfile, target = line.split()
            found[name] = (ROOT / dockerfile, target)
    return found


def built_images() -> set[str]:
    return set(images())


def third_party_images() -> set[str]:
    """The pinned third-party images listed in containers/README.md's table (backquoted names with a tag)."""
    text = (CONTAINERS / "README.md").read_text()
    table = text[text.index("## Third-party images"):]
    found = set(re.findall(r"`([a-z0-9][a-z0-9./-]*:[A-Za-z0-9._-]+)`", table))
    # "mercureimaging/mercure-ui:0.4.1 (and -receiver, ...)": the same tag for each of mercure's services.
    for line in table.splitlines():
        match = re.search(r"`(mercureimaging/mercure)-ui:([0-9.]+)` \(and (.*)\)", line)
        if match:
            for suffix in re.findall(r"`-([a-z]+)`", match.group(3)):
                found.add(f"{match.group(1)}-{suffix}:{match.group(2)}")
    return found


def stages(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", dockerfile.read_text(), flags=re.M | re.I)


def every_dockerfile() -> list[Path]:
    """Every Dockerfile of the repository, containers/ and elsewhere."""
    skip = {".git", ".venv", "node_modules", ".mypy_cache"}
    return sorted(p for p in ROOT.rglob("Dockerfile") if not skip & set(p.relative_to(ROOT).parts))


def test_every_dockerfile_passes_hadolint() -> None:
    found = every_dockerfile()
    assert set(DOCKERFILES) <= set(found)
    done = subprocess.run([tool("hadolint"), "--no-color", *map(str, found)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    assert subprocess.run([tool("hadolint"), str(bad)], capture_output=True, timeout=120).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pin_the_base_run_as_non_root_and_install_from_the_lock(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for base in re.findall(r"^FROM\s+(\S+)", text, flags=re.M):
        if base in {s for s in stages(dockerfile) if s}:
            continue
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+[A-Za-z0-9.-]*", base), f"{base}: pin an exact version"
        assert base in third_party_images_or_bases()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the image must end as a non-root user"
    assert "pip install --no-cache-dir -r /tmp/bidsflux/requirements.lock" in text
    assert "pip install --no-cache-dir --no-deps /tmp/bidsflux" in text
    assert not re.search(r"--(extra-)?index-url|--find-links|https?://", text), "no registry addresses in images"
    ignore = dockerfile.with_name("Dockerfile.dockerignore")
    assert ignore.is_file(), "every Dockerfile keeps its build context small"
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.M):
        for item in source.split():
            assert f"!{item.rstrip('/')}" in ignore.read_text().replace("/\n", "\n"), f"{item} is ignored"
            assert (ROOT / item).exists(), item


def third_party_images_or_bases() -> set[str]:
    return third_party_images()


def test_images_txt_names_the_dockerfiles_and_targets_that_exist() -> None:
    listed = images()
    assert set(listed) == {"indexer", "mercure-module", "convert", "datalad-runner", "derivative-gpu-example"}
    for name, (dockerfile, target) in listed.items():
        assert dockerfile.is_file(), name
        assert target == "-" or target in stages(dockerfile), (name, target)
    assert {d for d, _ in listed.values()} == set(DOCKERFILES), "every Dockerfile is built"
    indexer = (CONTAINERS / "indexer" / "Dockerfile").read_text()
    assert stages(CONTAINERS / "indexer" / "Dockerfile")[-1] == "indexer", "plain `docker build` gives the indexer"
    assert 'CMD ["bidsflux", "serve"]' in indexer and 'CMD ["bidsflux", "mercure-module"]' in indexer


def test_the_commands_the_images_run_exist() -> None:
    from bidsflux.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"serve", "mercure-module", "ci"} <= set(commands)
    assert "convert" in commands["ci"]._subparsers._group_actions[0].choices


def test_the_ci_template_passes_gitlab_s_schema_and_builds_every_image() -> None:
    template = CONTAINERS / "images.gitlab-ci.yml"
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", "--data-transform",
                           "gitlab-ci", str(template)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    job = yaml.safe_load(template.read_text())["build-image"]
    assert set(job["parallel"]["matrix"][0]["IMAGE"]) == built_images()
    assert job["tags"] == ["dind"]
    assert job["image"] in third_party_images() and job["services"][0]["name"] in third_party_images()
    assert any("containers/build.sh" in line for line in job["script"])


def build(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    from tests.unit.test_deploy_secrets import FakeDocker

    docker = FakeDocker(tmp_path / "engine")
    done = subprocess.run(["sh", str(CONTAINERS / "build.sh"), *args], capture_output=True, text=True, timeout=60,
                          env=docker.env(**env))
    return done, docker.state()["calls"]


@pytest.mark.parametrize("name", sorted(built_images()))
def test_build_sh_builds_and_pushes_each_image_under_the_project_registry(tmp_path: Path, name: str) -> None:
    done, calls = build(tmp_path, name, CI_REGISTRY_IMAGE="registry.example.org/bids-flux/bids-flux",
                        CI_COMMIT_TAG="v0.1.0", CI_COMMIT_SHA="abc123")
    assert done.returncode == 0, done.stderr
    image = f"registry.example.org/bids-flux/bids-flux/{name}:0.1.0"
    dockerfile, target = images()[name]
    assert calls[-1] == ["push", image]
    command = calls[-2]
    assert command[:2] == ["build", "--pull"] and command[-1] == "."
    assert command[command.index("--file") + 1] == str(dockerfile.relative_to(ROOT))
    assert command[command.index("--tag") + 1] == image
    assert (command[command.index("--target") + 1] if "--target" in command else "-") == target
    assert "org.opencontainers.image.revision=abc123" in command


def test_build_sh_tags_branch_builds_by_commit_and_can_skip_the_push(tmp_path: Path) -> None:
    done, calls = build(tmp_path, "--no-push", "convert", CI_REGISTRY_IMAGE="r.example.org/g/p",
                        CI_COMMIT_SHORT_SHA="1a2b3c4d")
    assert done.returncode == 0, done.stderr
    assert [c[0] for c in calls] == ["build"]
    assert "r.example.org/g/p/convert:1a2b3c4d" in calls[0]


def test_build_sh_refuses_unknown_images_and_missing_ci_variables(tmp_path: Path) -> None:
    done, calls = build(tmp_path, "nonsense", CI_REGISTRY_IMAGE="r/g/p", CI_COMMIT_SHORT_SHA="1")
    assert done.returncode == 2 and "unknown image" in done.stderr and calls == []
    done, calls = build(tmp_path / "again", "convert")
    assert done.returncode != 0 and "CI_REGISTRY_IMAGE" in done.stderr and calls == []


def test_the_gpu_example_writes_a_bids_derivative_and_insists_on_a_gpu_when_asked(tmp_path: Path) -> None:
    import nibabel
    import numpy

    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "ses-01" / "anat"
    anat.mkdir(parents=True)
    data = numpy.arange(24, dtype=numpy.float32).reshape(2, 3, 4)
    nibabel.save(nibabel.Nifti1Image(data, numpy.eye(4)), str(anat / "sub-01_ses-01_T1w.nii.gz"))
    script = CONTAINERS / "derivative-gpu-example" / "derive.py"
    path = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}  # no nvidia-smi here
    done = subprocess.run([sys.executable, str(script), str(bids), str(tmp_path / "out")], capture_output=True,
                          text=True, env=path, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "out" / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w_desc-stats.json")
                       .read_text())
    assert stats["shape"] == [2, 3, 4] and stats["mean"] == pytest.approx(11.5) and stats["max"] == 23.0
    description = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"]
    refused = subprocess.run([sys.executable, str(script), str(bids), str(tmp_path / "out2"), "--require-gpu"],
                             capture_output=True, text=True, env=path, timeout=120)
    assert refused.returncode == 3 and "runner tagged gpu" in refused.stderr
    assert not (tmp_path / "out2").exists()


def test_the_gpu_example_reports_the_gpus_nvidia_smi_shows(tmp_path: Path) -> None:
    # The NVIDIA Container Toolkit puts nvidia-smi into a job's container; here a stand-in answers as it does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    done = subprocess.run([sys.executable, str(CONTAINERS / "derivative-gpu-example" / "derive.py"), str(bids),
                           str(tmp_path / "out"), "--require-gpu"], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert "GPUs: NVIDIA H200, 143771 MiB" in done.stdout
    assert done.returncode == 4  # a GPU, but no image to work on


def test_readme_lists_every_image_and_every_third_party_pin_in_use() -> None:
    readme = (CONTAINERS / "README.md").read_text()
    for name in built_images():
        assert f"`{name}`" in readme
    used = set()
    for path in (ROOT / "BIDSflux_stack.yml", ROOT / "docker-compose-mercure.yml", CONTAINERS / "images.gitlab-ci.yml"):
        used |= {m for m in re.findall(r"image:\s*\"?([a-z0-9][a-z0-9./-]*:[A-Za-z0-9._-]+)", path.read_text())}
        used |= set(re.findall(r"name:\s*(docker:[0-9.]+-dind)", path.read_text()))
    for dockerfile in DOCKERFILES:
        used |= {b for b in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.M) if ":" in b}
    assert used == third_party_images(), "containers/README.md's list and the files disagree"
