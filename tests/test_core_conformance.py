"""Every call Go's UCloud/Core makes, with the exact bodies and headers Core sends, answered as Core decodes.

The bodies are tests/data/core-go/calls/*.json, rebuilt from the Go structs by
tests/conformance/generate.py; each answer is decoded against the Go type Core decodes it into
(tests/godecode.py); every update the stand-in Core receives is checked against Go's JobUpdate.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from godecode import GoDecodeError, decode, load_call, load_types, load_unknown_keys_body
from helpers import PROVIDER_ID, REPO, Harness, HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.ucloud.devcore import (
    GO_JOB_UPDATE,
    LEGACY_NULL_KEYS,
    DevCore,
    WireError,
    call_provider,
    check_update_item,
    go_json_bytes,
    job_body,
)

TYPES = load_types()
USER = "donna#1234"
CALLS = sorted(
    p.name.removesuffix(".json") for p in (Path(__file__).parent / "data" / "core-go" / "calls").glob("*.json")
    if p.name.count(".") == 1  # not the .sources.json and .unknown-keys.json beside each
)

SCRIPT = """#!/bin/bash
env | grep -E '^UCLOUD_' | sort > env.txt
printf '%s' "$UCLOUD_MOUNTS" > mounts.txt
printf '%s' "$UCLOUD_READONLY_MOUNTS" > readonly-mounts.txt
sleep "${UCLOUD_PARAM_SECONDS:-0}"
"""


def sections(tmp_path: Path, *, extra_parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provider as a site would set it up for the application and product of the generated bodies."""
    script = tmp_path / "acme-batch.sh"
    script.write_text(SCRIPT)
    drive = tmp_path / "drive-1234"
    drive.mkdir(exist_ok=True)
    return {
        "jobs": {"directory": str(tmp_path / "jobs")},
        "files": {"paths": {"/1234": str(drive)}},
        "products": [{"id": "cpu-1", "category": "cpu", "cpus": 1, "memory_mb": 100, "max_time_minutes": 180}],
        "applications": [
            {"name": "acme-batch", "version": "*", "script": str(script),
             "parameters": {"value": {"type": "text"}, "seconds": {"type": "integer", "optional": True},
                            "input": {"type": "file", "optional": True}, **(extra_parameters or {})}},
        ],
    }


async def send(h: Harness, call: dict[str, Any], body: Any, *, user: str | None = USER) -> tuple[int, Any]:
    """Send ``body`` as Core sends ``call``: its method and path, Go's bytes and headers."""
    return await call_provider(
        h.session, str(h.client.make_url("")).rstrip("/"), call["path"], h.keys,
        None if body is None else go_json_bytes(body), username=user if call["user_call"] else None,
        method=call["method"],
    )


def answered_as_core_expects(name: str, status: int, answer: Any, request: Any) -> None:
    call = load_call(name)
    if status >= 400:
        decode(TYPES, "error body", answer, complete=True)  # util.HttpError, as UCloud's servers write it
        assert answer["statusCode"] == status and answer["why"], answer  # Core trusts and shows `why` then
        return
    decode(TYPES, f"{name} response", answer)
    if call["response_type"].startswith("foundation.BulkResponse") and isinstance(request, dict) and "items" in request:
        assert len(answer["responses"]) == len(request["items"])


# -- the generated bodies and the decoder are what they claim -------------------------------------------


@pytest.mark.parametrize("name", CALLS)
def test_each_generated_body_has_exactly_the_shape_go_writes(name: str) -> None:
    call = load_call(name)
    if call["body"] is None:
        assert call["method"] == "GET" and call["request_type"] == "util.Empty"
        return
    decode(TYPES, f"{name} request", call["body"], complete=True)
    with pytest.raises(GoDecodeError, match="zzNewerCoreField"):
        decode(TYPES, f"{name} request", load_unknown_keys_body(name))


def test_the_decoder_refuses_what_go_refuses() -> None:
    ok = {"items": [{"id": "1", "update": {"state": "RUNNING", "timestamp": 5}}]}
    decode(TYPES, "update request", ok)
    for bad in ({"timestamp": 1.5}, {"timestamp": None}, {"timestamp": 1, "newTimeAllocation": "7"},
                {"timestamp": 1, "Status": "x"}, {"timestamp": 1, "status": 3}):
        with pytest.raises(GoDecodeError):
            decode(TYPES, "update request", {"items": [{"id": "1", "update": bad}]})


def test_the_stand_in_core_sends_jobs_exactly_as_go_core_does() -> None:
    job = job_body("77", "IN_QUEUE", provider=PROVIDER_ID, parameters={"value": {"type": "text", "value": "x"}},
                   resources=[{"type": "file", "path": "/1234/x", "readOnly": True}])
    decode(TYPES, "create request", {"items": [job]}, complete=True)
    assert job["specification"]["parameters"]["ucMetricSampleRate"]["value"] == "0ms"
    assert "createdBy" not in job_body("77", owner="")["owner"]  # Go's omitempty


def test_the_stand_in_core_checks_updates_against_gos_job_update() -> None:
    go_fields = {f["json"]: f["type"] for f in TYPES["structs"]["orchestrators.JobUpdate"]["fields"]}

    def kind(node: dict[str, Any]) -> str:
        if node["kind"] == "option":
            inner = node["elem"]["kind"]
            return "option-" + {"string": "string", "bool": "bool", "int": "int", "slice": "list"}[inner]
        return node["kind"]

    assert {name: kind(node) for name, node in go_fields.items()} == GO_JOB_UPDATE
    good = {"id": "1", "update": {"state": "RUNNING", "status": "s", "newMounts": None, "timestamp": 3}}
    check_update_item(good)
    for bad in ({"state": "RUNNING", "timestamp": 1.0}, {"timestamp": None}, {"State": "RUNNING", "timestamp": 1},
                {"newMounts": [], "timestamp": 1}, {"resourceList": {}, "timestamp": 1},
                {"newTimeAllocation": True, "timestamp": 1}, {"state": "CANCELING", "timestamp": 1}):
        with pytest.raises(WireError):
            check_update_item({"id": "1", "update": bad})


async def test_requests_carry_cores_headers_exactly(aiohttp_server: Any, keys: Any) -> None:
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app, host="127.0.0.1")
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await call_provider(session, str(server.make_url("")), "/ucloud/slurm/jobs", keys, {"items": []}, username=USER)
        await call_provider(session, str(server.make_url("")), "/ucloud/slurm/jobs/retrieveProducts", keys, method="GET")
    user_call, poll = seen
    assert set(user_call) == {"Host", "User-Agent", "Content-Length", "Authorization", "Ucloud-Username", "Accept-Encoding"}
    assert user_call["Authorization"].startswith("Bearer ") and user_call["Accept-Encoding"] == "gzip"
    assert base64.b64decode(user_call["Ucloud-Username"]).decode() == USER
    assert user_call["User-Agent"] == "Go-http-client/1.1"
    assert set(poll) == {"Host", "User-Agent", "Authorization", "Accept-Encoding"}


# -- the calls that need no Slurm --------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["as-sent", "unknown-keys"])
@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [
        ("retrieveProducts", 200, None),
        ("retrieveManifest", 200, {"enabled": False, "expireAfterMs": None}),
        ("requestDynamicParameters", 200, {"parameters": []}),
        ("onUpdatedLabels", 200, {}),
        ("integrationInit", 200, {}),
        ("attachResource", 400, None),
        ("detachResource", 400, None),
    ],
)
async def test_each_call_is_answered_as_core_decodes_it(
    make_harness: HarnessFactory, tmp_path: Path, name: str, status: int, expected: Any, variant: str
) -> None:
    h = await make_harness(sections=sections(tmp_path))
    call = load_call(name)
    body = call["body"] if variant == "as-sent" or call["body"] is None else load_unknown_keys_body(name)
    got_status, answer = await send(h, call, body)
    assert got_status == status, answer
    answered_as_core_expects(name, got_status, answer, body)
    if expected is not None:
        assert answer == expected
    if name == "retrieveProducts":
        assert [r["product"] for r in answer["responses"]] == [{"id": "cpu-1", "category": "cpu", "provider": "slurm"}]
    if name.endswith("Resource"):
        assert answer["why"].startswith("This provider cannot add or remove folders")


async def test_a_missing_created_by_is_accepted(make_harness: HarnessFactory, tmp_path: Path) -> None:
    """Go writes ``createdBy`` with omitempty: an empty owner name is not sent at all."""
    h = await make_harness(sections=sections(tmp_path))
    for name in ("onUpdatedLabels", "requestDynamicParameters"):
        body = copy.deepcopy(load_call(name)["body"])
        owner = body["items"][0]["owner"] if "items" in body else body["owner"]
        del owner["createdBy"]
        status, answer = await send(h, load_call(name), body)
        assert status == 200, answer


async def test_dynamic_parameters_offer_what_the_admin_declared_and_ucloud_lacks(
    make_harness: HarnessFactory, tmp_path: Path
) -> None:
    extra = {"threads": {"type": "integer", "optional": True, "title": "Threads", "description": "OpenMP threads"},
             "mode": {"type": "enumeration"}}
    h = await make_harness(sections=sections(tmp_path, extra_parameters=extra))
    call = load_call("requestDynamicParameters")
    status, answer = await send(h, call, call["body"])
    assert status == 200
    answered_as_core_expects("requestDynamicParameters", status, answer, call["body"])
    offered = {p["name"]: (p["type"], p["optional"], p["title"], p["description"]) for p in answer["parameters"]}
    assert offered == {"threads": ("integer", True, "Threads", "OpenMP threads"), "mode": ("text", False, "mode", "")}
    decode(TYPES, "requestDynamicParameters response", answer, complete=True)


async def test_an_application_the_provider_does_not_run_gets_no_parameters(
    make_harness: HarnessFactory, tmp_path: Path
) -> None:
    h = await make_harness(sections=sections(tmp_path, extra_parameters={"threads": {"type": "integer"}}))
    call = load_call("requestDynamicParameters")
    body = copy.deepcopy(call["body"])
    body["application"]["metadata"]["name"] = "someone-elses-app"
    assert await send(h, call, body) == (200, {"parameters": []})


# -- create, terminate and extend against the real Slurm --------------------------------------------------


def fresh_job(body: dict[str, Any], seconds: int | None = None) -> tuple[dict[str, Any], str]:
    """The generated body with a new job id (Core's ids are unique) and, if asked, a longer sleep."""
    body = copy.deepcopy(body)
    job = body["items"][0]
    job = job if "id" in job else job["job"]
    job["id"] = new_ucloud_id()
    job["createdAt"] = int(time.time() * 1000)
    if seconds is not None:
        job["specification"]["parameters"]["seconds"]["value"] = seconds
    return body, job["id"]


def updates_decode_as_go_job_updates(core: DevCore, ucloud_id: str) -> list[dict[str, Any]]:
    """Every update Core received decodes into Go's JobUpdate; the seed's Kotlin-era ``newMounts`` key,
    which Go drops, is always null (so nothing is lost)."""
    for request in core.requests:
        items = copy.deepcopy(request)
        for item in items:
            for key in LEGACY_NULL_KEYS & item["update"].keys():
                assert item["update"].pop(key) is None
        decode(TYPES, "update request", {"items": items})
    return core.updates_for(ucloud_id)


async def final_state(h: Harness, ucloud_id: str, timeout: float = 90) -> str:
    await wait_for(lambda: h.core.jobs.get(ucloud_id) in ("SUCCESS", "FAILURE", "EXPIRED"), timeout)
    return h.core.jobs[ucloud_id]


async def create(h: Harness, body: dict[str, Any], name: str = "create") -> str:
    status, answer = await send(h, load_call(name), body)
    assert status == 200, answer
    answered_as_core_expects(name, status, answer, body)
    (response,) = answer["responses"]
    return response["id"]


@pytest.mark.slurm
@pytest.mark.parametrize("name", ["create", "create-sampling-off"])
@pytest.mark.parametrize("variant", ["as-sent", "unknown-keys"])
async def test_go_cores_create_runs_the_job_with_cores_parameters_where_they_belong(
    slurm: LocalSlurm, make_harness: HarnessFactory, tmp_path: Path, name: str, variant: str
) -> None:
    h = await make_harness(sections=sections(tmp_path), interval=1, max_interval=2)
    source = load_call(name)["body"] if variant == "as-sent" else load_unknown_keys_body(name)
    body, ucloud_id = fresh_job(source)
    await create(h, body, name)
    assert await final_state(h, ucloud_id) == "SUCCESS"
    folder = tmp_path / "jobs" / ucloud_id
    env = dict(line.split("=", 1) for line in (folder / "env.txt").read_text().splitlines() if "=" in line)
    drive = tmp_path / "drive-1234"
    assert env["UCLOUD_METRIC_SAMPLE_RATE"] == ("250ms" if name == "create" else "0ms")
    assert env["UCLOUD_PARAM_VALUE"] == "Hello, UCloud" and env["UCLOUD_PARAM_SECONDS"] == "1"
    assert env["UCLOUD_PARAM_INPUT"] == f"{drive}/Home/in.txt"
    assert (folder / "mounts.txt").read_text() == f"{drive}/Home/data\n{drive}/Shared results"
    assert (folder / "readonly-mounts.txt").read_text() == f"{drive}/Shared results"
    assert not any(key.startswith("UCLOUD_PARAM_UC") for key in env)  # Core's own parameter is not a UCLOUD_PARAM_
    states = [u["state"] for u in updates_decode_as_go_job_updates(h.core, ucloud_id) if u["state"]]
    assert states[-1] == "SUCCESS"


@pytest.mark.slurm
async def test_go_cores_terminate_cancels_the_job(
    slurm: LocalSlurm, make_harness: HarnessFactory, tmp_path: Path
) -> None:
    h = await make_harness(sections=sections(tmp_path), interval=1, max_interval=2)
    body, ucloud_id = fresh_job(load_call("create")["body"], seconds=300)
    provider_generated_id = await create(h, body)
    await wait_for(lambda: h.core.jobs.get(ucloud_id) == "RUNNING", 60)
    terminate = copy.deepcopy(load_call("terminate")["body"])
    terminate["items"][0].update(id=ucloud_id, providerGeneratedId=provider_generated_id)
    status, answer = await send(h, load_call("terminate"), terminate)
    assert status == 200, answer
    answered_as_core_expects("terminate", status, answer, terminate)
    assert await final_state(h, ucloud_id) == "SUCCESS"
    updates_decode_as_go_job_updates(h.core, ucloud_id)


@pytest.mark.slurm
async def test_go_cores_extend_raises_the_time_limit(
    slurm: LocalSlurm, make_harness: HarnessFactory, tmp_path: Path
) -> None:
    h = await make_harness(sections=sections(tmp_path), interval=1, max_interval=2)
    body, ucloud_id = fresh_job(load_call("create")["body"], seconds=300)
    provider_generated_id = await create(h, body)
    extend = copy.deepcopy(load_call("extend")["body"])
    extend["items"][0]["job"].update(id=ucloud_id, providerGeneratedId=provider_generated_id)
    status, answer = await send(h, load_call("extend"), extend)
    assert status == 200, answer
    answered_as_core_expects("extend", status, answer, extend)
    (slurm_id,) = [j.slurm_id for j in h.store.all_jobs() if j.ucloud_id == ucloud_id]
    limit = slurm.run("squeue", "-h", "-j", slurm_id, "-o", "%l").stdout.strip()
    assert limit == "1:30:00"  # the job's hour plus Core's requested 30 minutes
    updates = await h.updates_for(ucloud_id, count=2)
    assert any(u["newTimeAllocation"] == 90 * 60 * 1000 for u in updates)
    updates_decode_as_go_job_updates(h.core, ucloud_id)
    slurm.run("scancel", slurm_id, check=False)


@pytest.mark.slurm
async def test_the_demos_dev_core_create_sends_go_cores_body_and_the_job_runs(
    slurm: LocalSlurm, make_harness: HarnessFactory, tmp_path: Path
) -> None:
    """What deploy/run-local.sh does, against the test cluster: ``dev-core create`` with the demo's
    product and application, Go Core's full body including ``ucMetricSampleRate``."""
    demo = tomllib.loads((REPO / "deploy" / "demo" / "provider.toml").read_text())
    demo["applications"][0]["script"] = str(REPO / demo["applications"][0]["script"])
    h = await make_harness(sections={**demo, "jobs": {"directory": str(tmp_path / "jobs")}}, interval=1, max_interval=2)
    ucloud_id = new_ucloud_id()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "provider", "dev-core", "create", "--dir", str(h.keys.directory),
        "--provider-url", str(h.client.make_url("")).rstrip("/"), "--job-id", ucloud_id,
        "--app", "hello/1.0", "--param", "greeting=UCloud", "--int-param", "seconds=1", "--sample-rate", "250ms",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out, err)
    assert out.decode().startswith(f"job {ucloud_id}: 200 ")
    assert await final_state(h, ucloud_id) == "SUCCESS"
    stdout = (tmp_path / "jobs" / ucloud_id / "stdout.txt").read_text()
    assert "Hello, UCloud!" in stdout and "job-report sample rate: 250ms" in stdout
    updates_decode_as_go_job_updates(h.core, ucloud_id)


def test_the_fixtures_are_from_the_pinned_commit() -> None:
    generator = (REPO / "tests" / "conformance" / "generate.py").read_text()
    assert f'PINNED_COMMIT = "{TYPES["commit"]}"' in generator


def test_the_fixtures_are_what_the_generator_writes_today(tmp_path: Path) -> None:
    """Where UCloud's source is at hand (UCLOUD_GIT_DIR, a bare clone): the committed fixtures are exactly
    what the generator writes now, so no hand edit and no forgotten rerun hides in them."""
    git_dir = Path(os.environ.get("UCLOUD_GIT_DIR", "/work/.mirror/SDU-eScience+UCloud/repo"))
    if not (git_dir / "HEAD").exists():
        pytest.skip("UCloud's Go source is not here (set UCLOUD_GIT_DIR to a bare clone); CI checks the committed fixtures only")
    out, template = tmp_path / "core-go", tmp_path / "core_go_job.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "conformance" / "generate.py"), "--git-dir", str(git_dir),
         "--out", str(out), "--template", str(template)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    committed_template = REPO / "provider" / "ucloud" / "core_go_job.json"
    assert template.read_text() == committed_template.read_text(), f"{committed_template} is stale: rerun the generator"
    committed = REPO / "tests" / "data" / "core-go"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(committed)) for p in committed.rglob("*") if p.is_file())
    for name in names:
        assert (out / name).read_text() == (committed / name).read_text(), f"{name} is stale: rerun the generator"
