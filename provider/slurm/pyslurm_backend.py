"""The pyslurm backend: the same two queries as the command backend, answered by a pyslurm worker process.

The worker (``pyslurm_worker.py``) is long-lived, so each pass costs one message each way. A call that
overruns its timeout kills the worker (it is stuck holding its GIL, e.g. 90 s on a hung slurmdbd) and
the next call starts a new one; a failed, timed-out or crashed call is ``QueryResult.failed``: unknown,
never gone.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from provider.slurm.backend import QueryBook
from provider.slurm.process import slurm_environment
from provider.slurm.types import ExitStatus, QueryResult, SlurmJob, is_valid_slurm_id, parse_state

log = structlog.get_logger(__name__)

WORKER = Path(__file__).with_name("pyslurm_worker.py")
START_TIMEOUT = 30.0
LINE_LIMIT = 256 * 1024 * 1024  # one answer is one line: all of slurmctld's jobs


class WorkerUnavailable(Exception):
    """The worker could not be started or could not import pyslurm; the message says why."""


def job_from_worker(data: dict[str, Any]) -> SlurmJob:
    code, signal = data.get("exit_code"), data.get("exit_signal")
    exit_status = None
    if code is not None or signal is not None:
        exit_status = ExitStatus(code or 0, signal or 0, ambiguous=bool(data.get("exit_code_ambiguous")))
    return SlurmJob(
        job_id=str(data["job_id"]),
        state=parse_state(str(data.get("state", ""))),
        name=str(data.get("name", "")),
        array_job_id=data.get("array_job_id"),
        array_task_id=data.get("array_task_id"),
        reason=str(data.get("reason", "")),
        exit_status=exit_status,
        comment=str(data.get("comment", "")),
    )


def history_ids(slurm_ids: Sequence[str]) -> set[int]:
    """The numeric ids to ask pyslurm.db for: it takes raw job ids only, so an array task given as
    ``<array>_<task>`` is asked for by its array's id, which returns every task of the array (each
    indexed under ``<array>_<task>`` too, so the task is found)."""
    ids: set[int] = set()
    for slurm_id in slurm_ids:
        if not is_valid_slurm_id(slurm_id):
            continue
        head = slurm_id.split("_", 1)[0]
        if head.isdigit():
            ids.add(int(head))
    return ids


class PyslurmBackend(QueryBook):
    name = "pyslurm"

    def __init__(self, *, python: str = "", slurm_conf: str | None = None, timeout: float = 30.0) -> None:
        super().__init__()
        self._python = python or sys.executable
        self._env = slurm_environment(slurm_conf)
        self._timeout = timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    # -- the worker process ------------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Start the worker and ask what it runs: pyslurm's version, the Slurm it was built for, the
        controller's version. Raises ``WorkerUnavailable`` with the reason if pyslurm is not usable."""
        async with self._lock:
            await self._spawn()
            answer = await self._exchange({"op": "probe"}, START_TIMEOUT)
        if isinstance(answer, str):
            raise WorkerUnavailable(answer)
        return answer

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self._python,
            "-I",  # isolated: the worker's own folder (provider/slurm, with its types.py) stays off sys.path
            str(WORKER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            limit=LINE_LIMIT,
            start_new_session=True,
        )
        self._stderr_task = asyncio.ensure_future(self._forward_stderr(self._proc))
        try:
            first = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT)  # type: ignore[union-attr]
            hello = json.loads(first) if first else {"ok": False, "error": "the worker exited at once"}
        except (TimeoutError, ValueError) as exc:
            hello = {"ok": False, "error": f"the worker did not start ({type(exc).__name__})"}
        if not hello.get("ok"):
            await self._kill()
            raise WorkerUnavailable(str(hello.get("error")))

    @staticmethod
    async def _forward_stderr(proc: asyncio.subprocess.Process) -> None:
        """libslurm writes its errors to stderr (``python: error: ...``): keep them in our log."""
        assert proc.stderr is not None
        async for line in proc.stderr:
            log.warning("pyslurm.stderr", line=line.decode("utf-8", "replace").rstrip())

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()

    async def close(self) -> None:
        async with self._lock:
            await self._kill()

    async def _exchange(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | str:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            await self._kill()
            self.restarts += 1
            return f"pyslurm did not answer within {timeout:g} s (worker stopped; a new one starts with the next query)"
        except (ConnectionError, BrokenPipeError) as exc:
            await self._kill()
            return f"the pyslurm worker went away ({exc})"
        if not line:
            code = proc.returncode
            await self._kill()
            return f"the pyslurm worker exited (code {code})"
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            return str(answer.get("error", "the pyslurm worker failed"))
        return answer

    async def _call(self, command: str, request: dict[str, Any]) -> dict[str, Any] | str:
        answer = await self.counted(command, lambda: self._ask(request))
        if isinstance(answer, str):
            log.warning("slurm.query_failed", command=command, error=answer)
        return answer

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any] | str:
        async with self._lock:
            try:
                if self._proc is None or self._proc.returncode is not None:
                    await self._spawn()
                return await self._exchange(request, self._timeout)
            except WorkerUnavailable as exc:
                return str(exc)

    # -- the SlurmBackend interface ----------------------------------------------------------------

    async def live_jobs(self) -> QueryResult:
        answer = await self._call("pyslurm.Jobs", {"op": "live"})
        if isinstance(answer, str):
            return QueryResult.failed(answer)
        return QueryResult.of([job_from_worker(j) for j in answer["jobs"]])

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        ids = sorted(history_ids(slurm_ids))
        if not ids:
            return QueryResult.of([])
        answer = await self._call("pyslurm.db.Jobs", {"op": "history", "ids": ids})
        if isinstance(answer, str):
            return QueryResult.failed(answer)
        return QueryResult.of([job_from_worker(j) for j in answer["jobs"]])
