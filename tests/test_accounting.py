"""The pure rules of usage accounting: units, the per-job rules, totals, and the wire shapes."""

from __future__ import annotations

import functools
import operator

import pytest

from provider.accounting import (
    Allocation,
    Frequency,
    JobUsage,
    Owner,
    Rate,
    Unit,
    UsageRecord,
    matching_record,
    next_total,
    next_usage,
    price_in_micro,
    report_item,
    total_units,
    usage_scope,
)
from provider.config import ConfigError, ProductSection, settings_from_dict
from provider.products import product_v2, rate_of
from provider.slurm.parse import UNIT_SEPARATOR, ParseError, allocation_from_tres, parse_sacct_usage
from provider.slurm.types import parse_state
from provider.usage import pricer

HOUR_MS = 3_600_000


def record(state: str, elapsed: int, cpus: int = 2, *, name: str = "54112", job_id: str = "17") -> UsageRecord:
    return UsageRecord(job_id, name, parse_state(state), elapsed, Allocation(cpus=cpus, memory_mb=4000, gpus=1, nodes=1))


def job(**kw: object) -> JobUsage:
    base = dict(ucloud_id="54112", slurm_id="17", expected_name="54112", owner=Owner("user", "donna#1234"), category="cpu", product="cpu-2")
    base.update(kw)
    return JobUsage(**base)  # type: ignore[arg-type]


# -- sacct's text ------------------------------------------------------------------------------------


def sacct_line(*values: str) -> str:
    return UNIT_SEPARATOR.join(values)


def test_sacct_usage_rows_become_records_with_elapsed_seconds_and_allocation() -> None:
    text = "\n".join(
        [
            sacct_line("12", "12", "COMPLETED", "3", "billing=2,cpu=2,node=1", "billing=2,cpu=2,mem=1500M,node=1", "54112"),
            sacct_line("13", "13", "RUNNING", "61", "billing=8,cpu=8,gres/gpu=2,mem=64G,node=2", "", "54113"),
            sacct_line("14", "14", "PENDING", "0", "", "billing=1,cpu=1,mem=8000M,node=1", "54114"),
            sacct_line("15", "9_3", "CANCELLED by 0", "5", "cpu=1,mem=1.5G,node=1", "", "a|b c"),
        ]
    )
    done, running, pending, task = parse_sacct_usage(text)
    assert (done.job_id, done.elapsed_seconds, done.allocation, done.finished) == ("12", 3, Allocation(2, 1500, 0, 1), True)
    assert running.allocation == Allocation(cpus=8, memory_mb=65536, gpus=2, nodes=2) and not running.finished
    assert pending.elapsed_seconds == 0 and pending.allocation.cpus == 0 and not pending.finished
    assert task.keys == ("15", "9_3") and task.finished and task.allocation.memory_mb == 1536


def test_memory_comes_from_the_request_where_slurm_does_not_allocate_it() -> None:
    assert allocation_from_tres("billing=2,cpu=2,node=1", "billing=2,cpu=2,mem=1500M,node=1").memory_mb == 1500
    assert allocation_from_tres("cpu=2,mem=1G,node=1", "cpu=2,mem=9G,node=1").memory_mb == 1024


@pytest.mark.parametrize("bad", ["cpu=two", "cpu", "mem=lots"])
def test_tres_that_does_not_parse_fails_the_query(bad: str) -> None:
    with pytest.raises(ParseError):
        allocation_from_tres(bad)


def test_an_elapsed_time_that_is_not_a_number_fails_the_query() -> None:
    with pytest.raises(ParseError):
        parse_sacct_usage(sacct_line("12", "12", "COMPLETED", "00:00:03", "cpu=1", "", "x"))


# -- units ---------------------------------------------------------------------------------------------


def test_the_worked_example_of_the_admin_guide() -> None:
    """docs/admin.md: two jobs of donna in category cpu (Core, PERIODIC_MINUTE)."""
    rate = Rate(Unit.CPU, Frequency.MINUTE)
    first = 4 * 1_000  # 4 CPUs for 1,000 s (16 min 40 s)
    second = 2 * 50  # 2 CPUs for 50 s
    assert total_units([(first, rate), (second, rate)]) == 68  # 4,100 core-seconds / 60 = 68.33 core-minutes
    hourly = Rate(Unit.CPU, Frequency.HOUR)
    assert total_units([(first, hourly), (second, hourly)]) == 1  # 1.14 core-hours
    money = Rate(Unit.MONEY, Frequency.HOUR, price_in_micro(0.35))  # 0.35 DKK per node-hour
    assert total_units([(1 * 1_000, money), (1 * 50, money)]) == 102_083  # 1,050 node-s x 350,000 / 3,600


def test_the_total_is_truncated_once_not_once_per_job() -> None:
    rate = Rate(Unit.CPU, Frequency.MINUTE)
    assert total_units([(40, rate), (40, rate)]) == 1  # two 40-s single-CPU jobs: 80 core-seconds


def test_memory_is_counted_in_gb_of_1000_mb_and_gpus_by_count() -> None:
    assert total_units([(4000 * 3600, Rate(Unit.MEMORY, Frequency.HOUR))]) == 4
    assert total_units([(2 * 1800, Rate(Unit.GPU, Frequency.HOUR))]) == 1


def test_a_category_mixing_frequencies_is_a_bug_not_a_number() -> None:
    with pytest.raises(ValueError):
        total_units([(60, Rate(Unit.CPU, Frequency.MINUTE)), (60, Rate(Unit.CPU, Frequency.HOUR))])


def test_prices_are_millionths_floored_as_core_stores_them() -> None:
    assert price_in_micro(0.35) == 350_000
    assert price_in_micro(1.0000009) == 1_000_000
    assert price_in_micro(12) == 12_000_000


# -- a job's usage over passes -----------------------------------------------------------------------


def test_a_running_job_counts_up_to_now_and_a_finished_one_what_sacct_recorded() -> None:
    running = next_usage(job(), record("RUNNING", 30), unit=Unit.CPU, map_final=False, now=0, give_up_ms=HOUR_MS)
    assert (running.elapsed_seconds, running.resource_seconds, running.final) == (30, 60, False)
    done = next_usage(running, record("COMPLETED", 45), unit=Unit.CPU, map_final=True, now=1, give_up_ms=HOUR_MS)
    assert (done.elapsed_seconds, done.resource_seconds, done.final) == (45, 90, True)
    assert next_usage(done, record("COMPLETED", 99), unit=Unit.CPU, map_final=True, now=2, give_up_ms=HOUR_MS) is done


def test_usage_never_goes_down_even_if_sacct_says_less() -> None:
    counted = job(elapsed_seconds=100, resource_seconds=200)
    after = next_usage(counted, record("COMPLETED", 90), unit=Unit.CPU, map_final=True, now=0, give_up_ms=HOUR_MS)
    assert after.resource_seconds == 200 and after.final


def test_a_running_row_of_a_job_the_map_holds_as_finished_waits_for_sacct_to_catch_up() -> None:
    """After a slurmdbd outage sacct may still say RUNNING (and keep counting) for a job that ended."""
    counted = job(elapsed_seconds=30, resource_seconds=60)
    held = next_usage(counted, record("RUNNING", 500), unit=Unit.CPU, map_final=True, now=1000, give_up_ms=HOUR_MS)
    assert (held.resource_seconds, held.final, held.held_since) == (60, False, 1000)
    caught_up = next_usage(held, record("COMPLETED", 40), unit=Unit.CPU, map_final=True, now=2000, give_up_ms=HOUR_MS)
    assert (caught_up.resource_seconds, caught_up.final, caught_up.held_since) == (80, True, None)


def test_without_a_record_nothing_changes_until_the_finished_job_is_given_up() -> None:
    counted = job(elapsed_seconds=30, resource_seconds=60)
    assert next_usage(counted, None, unit=Unit.CPU, map_final=False, now=0, give_up_ms=HOUR_MS) == counted
    waiting = next_usage(counted, None, unit=Unit.CPU, map_final=True, now=0, give_up_ms=HOUR_MS)
    assert not waiting.final and waiting.resource_seconds == 60
    given_up = next_usage(waiting, None, unit=Unit.CPU, map_final=True, now=HOUR_MS, give_up_ms=HOUR_MS)
    assert given_up.final and given_up.resource_seconds == 60


def test_a_slurm_id_that_now_names_another_job_is_not_ours() -> None:
    records = {"17": record("RUNNING", 30, name="other")}
    assert matching_record(job(), records) is None
    assert matching_record(job(), {"17": record("RUNNING", 30)}) is not None


def test_a_category_no_longer_configured_changes_nothing() -> None:
    counted = job(resource_seconds=60)
    assert next_usage(counted, record("COMPLETED", 45), unit=None, map_final=True, now=0, give_up_ms=HOUR_MS).resource_seconds == 60


# -- totals ------------------------------------------------------------------------------------------------


def test_totals_are_monotonic() -> None:
    assert next_total(None, 0).changed
    assert next_total(10, 12).total == 12
    held = next_total(10, 7)
    assert (held.total, held.changed, held.held) == (10, False, True)
    assert not next_total(10, 10).changed


def test_the_pricer_uses_each_products_rate_and_the_categorys_for_a_removed_resource_product() -> None:
    products = [
        ProductSection(id="cpu-1", category="cpu", cpus=1),
        ProductSection(id="m-1", category="money", accounting_unit="money", price=0.5, currency="DKK", accounting_frequency="hour"),
        ProductSection(id="m-2", category="money", accounting_unit="money", price=2, currency="DKK", accounting_frequency="hour"),
    ]
    total_of = pricer(products)
    assert total_of("cpu", [("cpu-1", 120), ("gone", 60)]) == 3
    assert total_of("money", [("m-1", 3600), ("m-2", 1800)]) == 500_000 + 1_000_000
    assert total_of("money", [("gone", 3600)]) == 0  # a currency's price is the product's: unknown
    assert total_of("nowhere", [("x", 60)]) is None


# -- the wire ----------------------------------------------------------------------------------------------


def test_a_project_job_charges_the_project_and_the_report_is_gos_report_usage_request() -> None:
    owner = Owner.of_job("donna#1234", "c4b3-project")
    item = report_item(owner, "cpu", "slurm", 68, usage_scope("slurm", "cpu", "e1"))
    assert item == {
        "isDeltaCharge": False,
        "owner": {"type": "project", "username": "", "projectId": "c4b3-project"},
        "categoryIdV2": {"name": "cpu", "provider": "slurm"},
        "usage": 68,
        "description": {"scope": "ucloud-slurm-provider/slurm/cpu/e1", "description": None},
    }
    assert Owner.of_job("donna#1234", None).to_wire() == {"type": "user", "username": "donna#1234", "projectId": ""}


def test_registration_follows_im2s_units_and_prices() -> None:
    cpu = product_v2(ProductSection(id="cpu-4", category="cpu", cpus=4, memory_mb=16000), "slurm")
    assert cpu["category"]["accountingUnit"] == {"name": "Core", "namePlural": "Core", "floatingPoint": False, "displayFrequencySuffix": True}
    assert (cpu["price"], cpu["cpu"], cpu["memoryInGigs"], "gpu" in cpu) == (4, 4, 16, False)  # gpu 0: omitempty
    money = ProductSection(id="m", category="m", accounting_unit="money", price=0.35, currency="DKK", accounting_frequency="hour")
    wire = product_v2(money, "slurm")
    assert wire["price"] == 350_000 and wire["category"]["accountingFrequency"] == "PERIODIC_HOUR"
    assert wire["category"]["accountingUnit"] == {"name": "DKK", "namePlural": "DKK", "floatingPoint": True, "displayFrequencySuffix": False}
    assert rate_of(money) == Rate(Unit.MONEY, Frequency.HOUR, 350_000)


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "complaint"),
    [
        ({"accounting_unit": "money"}, "needs a price above 0 and a currency"),
        ({"price": 2.0}, "for accounting_unit = \"money\" only"),
        ({"accounting_unit": "gpu"}, "every job would be free"),
        ({"accounting_unit": "memory"}, "needs memory_mb"),
        ({"accounting_frequency": "week"}, "accounting_frequency"),
    ],
)
def test_check_config_refuses_accounting_that_cannot_be_charged(product: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        settings_from_dict({"products": [{"id": "p", "category": "c", **product}]})


def test_products_of_one_category_must_agree_on_how_it_is_accounted() -> None:
    with pytest.raises(ConfigError, match="UCloud accounts per category"):
        settings_from_dict(
            {"products": [{"id": "a", "category": "c"}, {"id": "b", "category": "c", "accounting_frequency": "hour"}]}
        )
    settings = settings_from_dict({"products": [{"id": "a", "category": "c"}, {"id": "b", "category": "c", "cpus": 2}]})
    assert settings.accounting.interval == 30 and settings.accounting.on_exhausted == "record"


def test_sacct_ids_are_split_only_beyond_the_kernels_argument_limit() -> None:
    from provider.slurm.commands import id_chunks

    ten_thousand = [str(4_000_000 + i) for i in range(10_000)]
    assert id_chunks(ten_thousand) == [ten_thousand]  # 80,000 characters: one call
    many = [str(1_000_000_000 + i) for i in range(20_000)]  # 220,000 characters
    chunks = id_chunks(many)
    assert len(chunks) == 3 and functools.reduce(operator.iadd, chunks, []) == many
    assert all(len(",".join(c)) < 128 * 1024 for c in chunks)
