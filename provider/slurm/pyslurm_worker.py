"""The pyslurm worker: a separate process that answers Slurm queries through pyslurm, one JSON line each.

Why a process of its own (docs/admin.md, section 4, has the admin's side): pyslurm never releases the GIL (a hung
slurmdbd freezes every thread for 90 s), ``import pyslurm`` with a bad ``SLURM_CONF`` ends the process,
and pyslurm objects cannot be pickled. So the daemon talks to this program over stdin/stdout, kills it
when a call overruns, and starts a new one. It uses nothing but the standard library and pyslurm, so a
site may run it with another interpreter (``[slurm] pyslurm_python``), the one its pyslurm was built for.

Protocol: a request ``{"op": "probe" | "live" | "history", "ids": [...]}`` per line; an answer
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}`` per line. Jobs are plain dicts.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _job(job: Any, *, from_db: bool) -> dict[str, Any]:
    """A pyslurm Job as plain data, with pyslurm's recorded defects worked around."""
    array_id = getattr(job, "array_id", None) or None
    task = getattr(job, "array_task_id", None)
    waiting = getattr(job, "array_tasks_waiting", None)
    if array_id and task is None and not waiting:
        task = 0  # pyslurm reads task 0 as None (it treats 0 as unset)
    reason = _text(getattr(job, "state_reason", ""))
    if from_db or reason == "None":
        reason = ""  # the accounting view always says 'None' (it reads state_reason_prev)
    code = getattr(job, "exit_code", None)
    return {
        "job_id": str(job.id),
        "state": _text(job.state),
        "name": _text(job.name),
        "array_job_id": str(array_id) if array_id else None,
        "array_task_id": str(task) if task is not None else (_text(waiting) or None),
        "reason": reason,
        "exit_code": code,
        "exit_signal": getattr(job, "exit_code_signal", None),
        # pyslurm subtracts 128 from exit statuses of 128 and more: a code below 128 may be one above.
        "exit_code_ambiguous": code is not None and code < 128,
        "comment": _text(getattr(job, "comment", "")),
    }


def _probe(pyslurm: Any) -> dict[str, Any]:
    built = ".".join(str(p) for p in pyslurm.slurm_api_version())
    answer: dict[str, Any] = {"ok": True, "pyslurm": pyslurm.__version__, "built_for": built, "controller": None}
    try:
        answer["controller"] = pyslurm.slurmctld.Config.load().version
    except Exception as exc:  # the controller may be down; the build version still tells a lot
        answer["controller_error"] = str(exc)
    return answer


def _handle(pyslurm: Any, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "probe":
        return _probe(pyslurm)
    if op == "live":
        jobs = pyslurm.Jobs.load()
        return {"ok": True, "jobs": [_job(j, from_db=False) for j in jobs.values()]}
    if op == "history":
        ids = [int(i) for i in request.get("ids", [])]
        if not ids:
            return {"ok": True, "jobs": []}
        # A new connection per call: a reused one keeps answering from its first read (stale data).
        jobs = pyslurm.db.Jobs.load(pyslurm.db.JobFilter(ids=ids))
        return {"ok": True, "jobs": [_job(j, from_db=True) for j in jobs.values()]}
    return {"ok": False, "error": f"unknown operation {op!r}"}


def main() -> int:
    conf = os.environ.get("SLURM_CONF", "")
    if not conf or not os.path.isfile(conf):
        # Without a readable SLURM_CONF, importing pyslurm kills the process (after 60 s of retries).
        print(json.dumps({"ok": False, "fatal": True, "error": f"SLURM_CONF is not a readable file: {conf!r}"}), flush=True)
        return 2
    try:
        import pyslurm
    except ImportError as exc:
        print(json.dumps({"ok": False, "fatal": True, "error": f"pyslurm cannot be imported: {exc}"}), flush=True)
        return 3
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        try:
            answer = _handle(pyslurm, json.loads(line))
        except Exception as exc:  # RPCError and friends: this query failed, the worker lives on
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "errno": getattr(exc, "errno", None)}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
