"""The daemon's HTTP surface: who may call it, what bodies it accepts, and the seed scenario."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import PROVIDER_ID, HarnessFactory, wait_for
from provider.slurm.backend import QueryBook
from provider.slurm.types import QueryResult
from provider.ucloud.devcore import job_body

DATA = Path(__file__).parent / "data"


async def test_seed_scenario_byte_for_byte(make_harness: HarnessFactory) -> None:
    """The exact verify body of the seed, signed as Core signs, gets {} and Core hears the seed's update."""
    h = await make_harness()
    resp = await h.verify((DATA / "seed_verify_request.json").read_bytes())
    assert resp.status == 200
    assert await resp.json() == {}

    (update,) = await h.updates_for("54112")
    expected = json.loads((DATA / "seed_update_request.json").read_text())
    assert isinstance(update["timestamp"], int) and not isinstance(update["timestamp"], bool)
    received = {"items": [{"id": "54112", "update": {**update, "timestamp": 0}}]}
    assert json.dumps(received, indent=4) == json.dumps(expected, indent=4)
    assert h.core.jobs["54112"] == "FAILURE"
    assert sum(h.backend.calls.values()) == 0  # a job we never tracked needs no Slurm query


class HeldSlurm(QueryBook):
    """A Slurm backend whose squeue does not answer until the test lets it."""

    name = "held"

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def live_jobs(self) -> QueryResult:
        async def held() -> QueryResult:
            await self.release.wait()
            return QueryResult.of([])

        outcome = await self.counted("squeue", held)
        assert not isinstance(outcome, str)
        return outcome

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        return QueryResult.of([])


async def test_verify_answers_before_slurm_is_asked(make_harness: HarnessFactory) -> None:
    """Core's verify is answered {} at once; the pass that asks Slurm about the jobs runs after."""
    backend = HeldSlurm()
    backend.release.set()  # the start-up pass may run
    h = await make_harness(backend=backend)
    backend.release.clear()
    ids = [str(n) for n in range(1, 201)]
    for n, ucloud_id in enumerate(ids):
        h.track(ucloud_id, str(5000 + n))  # tracked: the pass must ask squeue about them
    before = backend.calls["squeue"]
    async with asyncio.timeout(10):  # a verify that waited for the pass would wait for ever: fail instead
        resp = await h.verify([job_body(i) for i in ids])
    assert resp.status == 200 and await resp.json() == {}
    await wait_for(lambda: backend.calls["squeue"] == before + 1, 10)  # the pass asks Slurm now...
    assert not h.sync.idle  # ...and waits for it, after Core had its answer
    backend.release.set()
    await h.settled()


async def test_a_job_created_moments_ago_is_not_failed(make_harness: HarnessFactory) -> None:
    h = await make_harness(unknown_job_grace=3600)
    resp = await h.verify([job_body("777", "IN_QUEUE", created_at=int(time.time() * 1000))])
    assert resp.status == 200
    await h.settled()
    assert h.core.updates_for("777") == []


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "_UCloud", "role": "SERVICE", "iss": "cloud.sdu.dk", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    "token_kind", ["none", "expired", "other-key", "alg-none", "hs256", "provider-role"]
)
async def test_requests_not_signed_as_core_signs_get_401(make_harness: HarnessFactory, token_kind: str) -> None:
    h = await make_harness()
    tokens = {
        "expired": h.keys.service_token(now=int(time.time()) - 7200),
        "other-key": jwt.encode(_claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"),
        "alg-none": jwt.encode(_claims(), None, algorithm="none"),
        "hs256": jwt.encode(_claims(), "a-shared-secret-of-enough-length!", algorithm="HS256"),
        "provider-role": h.keys.service_token(role="PROVIDER", sub="#P_slurm"),
    }
    headers = {"Authorization": f"Bearer {tokens[token_kind]}"} if token_kind in tokens else {}
    resp = await h.client.post(f"/ucloud/{PROVIDER_ID}/jobs/verify", data=b'{"items":[]}', headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert set(body) == {"statusCode", "why", "errorCode", "detailedCode"}
    assert body["statusCode"] == 401 and body["why"] and body["errorCode"] == "" and body["detailedCode"] == 0
    await h.settled()
    assert h.core.updates == []


async def test_another_provider_id_gets_404(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    resp = await h.client.post(
        "/ucloud/not-us/jobs/verify",
        data=b'{"items":[]}',
        headers={"Authorization": f"Bearer {h.keys.service_token()}"},
    )
    assert resp.status == 404
    assert (await resp.json())["why"] == "This is not provider 'not-us'"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "expected an object"),
        (b"{not json", "the body is not JSON"),
        (b"[]", "expected an object"),
        (b'{"jobs": []}', "expected an object"),
        (b'{"items": {}}', "items: Input should be a valid list"),
        (b'{"items": [{"id": "1"}]}', "items.0.createdAt: Field required"),
        (b"\xff\xfe", "the body is not JSON"),
    ],
)
async def test_malformed_bodies_get_400_with_a_clear_why(make_harness: HarnessFactory, body: bytes, why: str) -> None:
    h = await make_harness()
    resp = await h.verify(body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["statusCode"] == 400 and why in answer["why"], answer["why"]


async def test_a_bad_state_names_the_field(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    job = job_body("5")
    job["status"]["state"] = "EXPLODED"
    resp = await h.verify([job])
    assert resp.status == 400
    assert "items.0.status.state" in (await resp.json())["why"]


async def test_healthz_needs_no_token(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    resp = await h.client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


PRODUCTS = {
    "products": [
        {"id": "cpu-1", "category": "cpu", "max_nodes": 2},
        {"id": "big-1", "category": "cpu", "time_extension": False, "logs": False},
    ],
    "applications": [{"name": "acme-batch", "script": "/nonexistent/acme.sh"}],
}


async def test_retrieve_products_answers_job_support_for_each_product(make_harness: HarnessFactory) -> None:
    h = await make_harness(sections=PRODUCTS)
    status, answer = await h.call("jobs/retrieveProducts", method="GET", username=None)
    assert status == 200
    assert answer["responses"][0] == {
        "product": {"id": "cpu-1", "category": "cpu", "provider": PROVIDER_ID},
        "docker": {},
        "virtualMachine": {},
        "native": {"enabled": True, "web": False, "vnc": False, "logs": True, "terminal": False, "peers": False,
                   "timeExtension": True},
        "queueStatus": None,
    }
    assert answer["responses"][1]["native"]["timeExtension"] is False
    assert answer["responses"][1]["native"]["logs"] is False  # the admin turned the follow stream off


async def test_manifest_says_no_connection_flow(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    status, answer = await h.call("integration/retrieveManifest", method="GET", username=None)
    assert (status, answer) == (200, {"enabled": False, "expireAfterMs": None})


@pytest.mark.parametrize("kind", ["files/collections", "ingresses", "networkips", "licenses", "private-networks"])
async def test_other_resource_types_are_404(make_harness: HarnessFactory, kind: str) -> None:
    h = await make_harness()
    status, answer = await h.call(f"{kind}/retrieveProducts", method="GET", username=None)
    assert status == 404 and answer["statusCode"] == 404


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"application": ("unknown", "unknown")}, "The application unknown unknown is not available on this provider"),
        ({"product": ("gpu-1", "gpu")}, "The product gpu-1 (gpu) is not offered by this provider"),
        ({"replicas": 5}, "Too many nodes requested: 5 (the product cpu-1 allows 2)"),
        ({"resources": [{"type": "file", "path": "/1234/Home/x"}]},
         "The file /1234/Home/x is not available on this cluster: its drive is not one of the folders this "
         "provider mounts (ask the provider's administrators, or copy the file to a drive of this provider) "
         "(a mounted folder)"),
    ],
)
async def test_create_refusals_are_400_with_a_why_the_user_understands(
    make_harness: HarnessFactory, change: dict[str, object], why: str
) -> None:
    h = await make_harness(sections=PRODUCTS)
    job = job_body("31337", **{"product": ("cpu-1", "cpu"), **change})  # type: ignore[arg-type]
    status, answer = await h.call("jobs", {"items": [job]})
    assert status == 400 and answer["why"] == why
    assert h.store.all_jobs() == [] and h.core.updates == []


async def test_an_application_whose_script_is_missing_is_refused_and_logged(make_harness: HarnessFactory) -> None:
    h = await make_harness(sections=PRODUCTS)
    status, answer = await h.call("jobs", {"items": [job_body("31338", product=("cpu-1", "cpu"))]})
    assert status == 400 and answer["why"] == "This application is misconfigured on the provider (its script cannot be read)"
