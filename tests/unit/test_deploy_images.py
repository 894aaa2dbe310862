"""containers/: the images, their Dockerfile (hadolint), the CI template that builds them, and the build script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS = ROOT / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
DOCKERFILES = [DOCKERFILE]


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: install the pinned packages of requirements.lock"
    return found


def images() -> list[str]:
    """containers/images.txt: the image names, each a target of containers/Dockerfile."""
    return [line.strip() for line in (CONTAINERS / "images.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


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


@dataclass
class Stage:
    name: str
    parent: str  # a stage of the same file, or the base image
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments), in order


def parse_stages(dockerfile: Path = DOCKERFILE) -> list[Stage]:
    """The file's stages in order, continuation lines joined and comments left out."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), " ".join(rest.split())
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.I)
            assert match, line
            found.append(Stage(match.group(2) or "", match.group(1)))
        else:
            assert found, f"{line}: before the first FROM"
            found[-1].instructions.append((word, rest))
    return found


def stages(dockerfile: Path = DOCKERFILE) -> list[str]:
    return [stage.name for stage in parse_stages(dockerfile)]


def chain(target: str, dockerfile: Path = DOCKERFILE) -> list[Stage]:
    """The stages a build of ``target`` goes through, the first FROM an image first."""
    by_name = {stage.name: stage for stage in parse_stages(dockerfile) if stage.name}
    found = [by_name[target]]
    while found[0].parent in by_name:
        found.insert(0, by_name[found[0].parent])
    return found


def effective(target: str, instruction: str) -> list[str]:
    """Every ``instruction`` (RUN, USER, ...) a build of ``target`` runs, in order."""
    return [args for stage in chain(target) for word, args in stage.instructions if word == instruction]


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


def test_one_dockerfile_builds_every_image() -> None:
    # The shared install (packages, venv, lock, the package, the users) is written once, not per image.
    assert sorted(p.relative_to(CONTAINERS) for p in CONTAINERS.rglob("Dockerfile*")) == [
        Path("Dockerfile"), Path("Dockerfile.dockerignore")]
    text = DOCKERFILE.read_text()
    assert text.count("pip install --no-cache-dir -r /tmp/bidsflux/requirements.lock") == 1
    assert text.count("pip install --no-cache-dir --no-deps /tmp/bidsflux") == 1
    assert len(re.findall(r"^FROM\s+[a-z0-9./-]+:", text, flags=re.M)) == 1, "one external base image"
    for name in images():
        assert chain(name)[0].name == "base", f"{name} builds on the shared base stage"


def test_the_base_is_pinned_and_everything_python_comes_from_the_lock() -> None:
    base = parse_stages()[0]
    assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+[A-Za-z0-9.-]*", base.parent), f"{base.parent}: pin a version"
    assert base.parent in third_party_images()
    runs = " ".join(args for word, args in base.instructions if word == "RUN")
    assert "pip install --no-cache-dir -r /tmp/bidsflux/requirements.lock" in runs
    assert runs.index("requirements.lock") < runs.index("pip install --no-cache-dir --no-deps /tmp/bidsflux")
    text = DOCKERFILE.read_text()
    assert not re.search(r"--(extra-)?index-url|--find-links|https?://", text), "no registry addresses in images"
    every_run = "\n".join(args for stage in parse_stages() for word, args in stage.instructions if word == "RUN")
    installs = [i.strip() for i in re.findall(r"pip install ([^&;\n]*)", every_run)]
    assert installs == ["--no-cache-dir -r /tmp/bidsflux/requirements.lock", "--no-cache-dir --no-deps /tmp/bidsflux"], \
        "no Python package from outside the lock"


@pytest.mark.parametrize("name", images())
def test_each_image_ends_as_the_non_root_user_with_its_home(name: str) -> None:
    users = effective(name, "USER")
    assert users and users[-1] == "10001:10001", "the image must end as the non-root user bidsflux"
    useradd = " ".join(args for args in effective(name, "RUN") if "useradd" in args)
    assert useradd.count("useradd") == 1 and "--uid 10001" in useradd and "--gid 10001" in useradd
    home = "/var/lib/bidsflux" if name in {"indexer", "mercure-module"} else "/home/bidsflux"
    assert f"--home-dir {home}" in useradd
    assert effective(name, "WORKDIR")[-1] == home
    assert f"HOME={home}" in " ".join(effective(name, "ENV"))


def test_each_image_keeps_its_own_extras_and_command() -> None:
    def runs(name: str) -> str:
        return " ".join(effective(name, "RUN"))

    def envs(name: str) -> str:
        return " ".join(effective(name, "ENV"))

    commands = {name: json.loads(effective(name, "CMD")[-1]) for name in images()}
    assert commands == {"indexer": ["bidsflux", "serve"], "mercure-module": ["bidsflux", "mercure-module"],
                        "convert": ["bidsflux", "ci", "convert", "--help"], "datalad-runner": ["datalad", "--version"],
                        "derivative-gpu-example": ["bidsflux-derive-example", "--help"]}
    for name in ("indexer", "mercure-module"):
        assert "dcmtk" in runs(name) and "tini" in runs(name) and "TCP_NODELAY=1" in envs(name)
        assert effective(name, "ENTRYPOINT") == ['["/usr/bin/tini", "--"]']
        assert any(c.endswith("containers/indexer/healthcheck.py /usr/local/bin/bidsflux-healthcheck")
                   for c in effective(name, "COPY"))
    assert effective("indexer", "EXPOSE") == ["11112 2762 9108"]
    for name in ("convert", "datalad-runner", "derivative-gpu-example"):
        # GitLab's runner starts its own shell: no entrypoint, and none of the service's packages.
        assert not effective(name, "ENTRYPOINT") and "dcmtk" not in runs(name) and "TCP_NODELAY" not in envs(name)
    assert "pigz" in runs("convert") and "pigz" not in runs("datalad-runner") + runs("indexer")
    assert "heudiconv --version" in runs("convert") and "bids-validator-deno --version" in runs("convert")
    assert "NVIDIA_VISIBLE_DEVICES=all" in envs("derivative-gpu-example")
    assert not any("NVIDIA" in envs(name) for name in images() if name != "derivative-gpu-example")
    assert any(c.endswith("containers/derivative-gpu-example/derive.py /usr/local/bin/bidsflux-derive-example")
               for c in effective("derivative-gpu-example", "COPY"))


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile.
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore").read_text()
    allowed = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    assert "*" in ignore.splitlines(), "everything else stays out of the context"
    copied = set()
    for stage in parse_stages():
        for word, args in stage.instructions:
            if word == "COPY":
                sources = [a for a in args.split() if not a.startswith("--")][:-1]
                assert not any(a.startswith("--from") for a in args.split()), "no copies from other images"
                copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed, "the .dockerignore lets in exactly what the Dockerfile copies"
    for item in copied:
        assert (ROOT / item).exists(), item


def test_images_txt_names_the_targets_that_exist() -> None:
    assert images() and len(images()) == len(set(images()))
    assert set(images()) == {"indexer", "mercure-module", "convert", "datalad-runner", "derivative-gpu-example"}
    assert set(images()) <= set(stages()), "every image is a target of containers/Dockerfile"
    assert all(stages()), "every stage has a name"
    assert stages()[-1] == "indexer", "plain `docker build` gives the indexer"


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
    assert calls[-1] == ["push", image]
    command = calls[-2]
    assert command[:2] == ["build", "--pull"] and command[-1] == "."
    assert command[command.index("--file") + 1] == "containers/Dockerfile"
    assert command[command.index("--target") + 1] == name
    assert command[command.index("--tag") + 1] == image
    assert "org.opencontainers.image.revision=abc123" in command


def test_build_sh_tags_branch_builds_by_commit_and_can_skip_the_push(tmp_path: Path) -> None:
    done, calls = build(tmp_path, "--no-push", "convert", CI_REGISTRY_IMAGE="r.example.org/g/p",
                        CI_COMMIT_SHORT_SHA="1a2b3c4d")
    assert done.returncode == 0, done.stderr
    assert [c[0] for c in calls] == ["build"]
    assert "r.example.org/g/p/convert:1a2b3c4d" in calls[0]


def test_build_sh_refuses_unknown_images_and_missing_ci_variables(tmp_path: Path) -> None:
    for unknown in ("nonsense", "base", "job", "convert datalad-runner", "con"):
        done, calls = build(tmp_path / unknown.replace(" ", "_"), unknown, CI_REGISTRY_IMAGE="r/g/p",
                            CI_COMMIT_SHORT_SHA="1")
        assert done.returncode == 2 and "unknown image" in done.stderr and calls == [], unknown
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
