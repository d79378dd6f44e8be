"""Which ids the pyslurm backend asks slurmdbd for (pure: no pyslurm needed)."""

from __future__ import annotations

from provider.slurm.pyslurm_backend import history_ids, job_from_worker
from provider.slurm.types import QueryResult


def test_an_array_task_is_asked_for_by_its_arrays_id() -> None:
    assert history_ids(["77", "120_3", "120_4", "bad;id", "9_x"]) == {77, 120}


def test_the_arrays_answer_holds_the_task_under_its_display_id() -> None:
    rows = [
        {"job_id": 121 + t, "state": "COMPLETED", "name": "4242", "array_job_id": "120", "array_task_id": str(t)}
        for t in range(3)
    ]
    result = QueryResult.of([job_from_worker(row) for row in rows])
    assert result.jobs["120_1"].job_id == "122" and result.jobs["120_1"].name == "4242"
