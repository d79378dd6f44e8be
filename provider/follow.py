"""Users follow their job's output live in UCloud: the follow websocket, Core's frames, one reader a job.

Core opens ``GET /ucloud/jobs.provider.<id>/websocket`` with its bearer token (checked by the same
middleware as every ``/ucloud/`` call, before any upgrade), sends one ``init`` frame naming the job,
and relays every text frame the provider sends as a log message to the user's browser
(``core2/pkg/orchestrator/job.go`` ``jobsFollow``; IM2's ``controller/jobs.go`` is the other side).

A follower first gets what ``stdout.txt`` and ``stderr.txt`` already hold (the last
``HISTORY_BYTES`` of each, saying so when more was cut), then what is written, until the job is final
in the job map and both files are drained; then a ``response`` frame ends the stream. All followers of
a job share one ``JobOutput`` that polls the two files; each follower has a bounded queue, and one
that cannot keep up is ended (told why) instead of holding the others back or growing memory.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from provider.store import Store

log = structlog.get_logger(__name__)

STREAMS = ("stdout", "stderr")
# Per-node output a job script writes with ``srun --output=stdout.%t.txt --error=stderr.%t.txt``: rank N.
RANK_FILE = re.compile(r"^(stdout|stderr)\.(\d{1,5})\.txt$")
POLL_SECONDS = 0.2  # as IM2's tail
FINAL_CHECK_SECONDS = 1.0  # how often a reader asks the job map whether the job is final
HISTORY_BYTES = 4 * 1024 * 1024  # what a new follower gets of a file's past, at most
CHUNK_BYTES = 64 * 1024  # the most one frame carries
QUEUE_FRAMES = 256  # a follower's backlog before it counts as too slow
INIT_TIMEOUT = 30.0  # seconds Core has to send its init frame


# -- Core's frames (pure) ---------------------------------------------------------------------------


class FollowRefused(Exception):
    """The first frame is not a follow request this provider can serve."""


@dataclass(frozen=True)
class FollowInit:
    stream_id: str
    job_id: str


def parse_init(text: str, provider_id: str) -> FollowInit:
    """Core's first frame: ``{"call":"jobs.provider.<id>.follow","streamId":…,"payload":{"type":"init","job":Job}}``."""
    try:
        message = json.loads(text)
    except ValueError:
        raise FollowRefused("the first frame is not JSON") from None
    if not isinstance(message, dict):
        raise FollowRefused("the first frame is not a JSON object")
    if message.get("call") != f"jobs.provider.{provider_id}.follow":
        raise FollowRefused(f"unexpected call {str(message.get('call'))[:100]!r}")
    payload = message.get("payload")
    job = payload.get("job") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("type") != "init" or not isinstance(job, dict):
        raise FollowRefused("the first frame is not an init request with a job")
    job_id, stream_id = job.get("id"), message.get("streamId", "")
    if not isinstance(job_id, str) or not job_id or len(job_id) > 256 or not isinstance(stream_id, str):
        raise FollowRefused("the init request names no job")
    return FollowInit(stream_id[:256], job_id)


def is_cancel(text: str) -> bool:
    """A later frame asking to stop (IM2 accepts ``{"type":"cancel"}``, in the payload or at the top)."""
    try:
        message = json.loads(text)
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    payload = message.get("payload")
    return message.get("type") == "cancel" or (isinstance(payload, dict) and payload.get("type") == "cancel")


def log_frame(stream_id: str, session: str, stream: str, text: str, rank: int = 0) -> dict[str, Any]:
    """One ``message`` frame; Core decodes ``payload`` as Go's ``JobLogMessage``."""
    payload: dict[str, Any] = {"streamId": session, "rank": rank, "stdout": None, "stderr": None, "channel": None}
    payload[stream] = text
    return {"type": "message", "streamId": stream_id, "payload": payload}


def end_frame(stream_id: str, session: str, status: int = 200) -> dict[str, Any]:
    """The ``response`` frame that ends a stream (as IM2 sends it)."""
    payload: dict[str, Any] = {"streamId": session, "rank": 0, "stdout": None, "stderr": None, "channel": None}
    return {"type": "response", "status": status, "streamId": stream_id, "payload": payload}


# -- reading a file as it grows ---------------------------------------------------------------------


@dataclass
class FileTail:
    """New text of one output file since the last read: bytes decoded as UTF-8 across reads (invalid
    bytes become U+FFFD), a file that shrank (truncated or replaced) is read again from its start.

    ``fetch`` only reads (it may run in a thread); ``take`` moves the offset and decodes, in the event
    loop, so a follower joining between the two sees each byte exactly once."""

    path: Path
    offset: int = 0
    inode: int = 0  # of the file read so far: another one (a rotation) is read from its start
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def fetch(self, limit: int = CHUNK_BYTES * 16) -> tuple[int, int, bytes]:
        """(the file's inode, where the bytes start, the bytes appended since ``offset``); nothing if the
        file is not there."""
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                same = stat.st_ino == self.inode and stat.st_size >= self.offset
                start = self.offset if same else 0  # truncated, or replaced by another file: start over
                if stat.st_size == start:
                    return stat.st_ino, start, b""
                f.seek(start)
                return stat.st_ino, start, f.read(min(limit, stat.st_size - start))
        except FileNotFoundError:
            return self.inode, self.offset, b""

    def take(self, inode: int, start: int, data: bytes) -> str:
        if start != self.offset or inode != self.inode:
            self.decoder.reset()
        self.inode, self.offset = inode, start + len(data)
        return self.decoder.decode(data)

    def identity(self) -> tuple[int, int]:
        """(inode, size) of the file now; (0, 0) if it is not there yet."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return 0, 0
        return stat.st_ino, stat.st_size

    def changed(self) -> bool:
        """Whether there is anything to read (one stat, cheap enough for the event loop itself)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return stat.st_size != self.offset or stat.st_ino != self.inode


def read_history(path: Path, end: int, limit: int = HISTORY_BYTES) -> str:
    """The file's text before ``end`` (its last ``limit`` bytes, with a line saying what was left out)."""
    if end <= 0:
        return ""
    start = max(0, end - limit)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    text = data.decode("utf-8", errors="replace")
    if start:
        text = f"[... {start:,} earlier bytes of {path.name} are not shown here ...]\n" + text
    return text


def chunks(text: str, size: int = CHUNK_BYTES) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or []


# -- one reader a job, shared by its followers ------------------------------------------------------


Chunk = tuple[str, int, str]  # (stdout or stderr, rank, text)


@dataclass
class Follower:
    queue: asyncio.Queue[Chunk | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_FRAMES))
    too_slow: bool = False


class JobOutput:
    """Polls one job's output files and hands what is new to every follower's queue: ``stdout.txt`` and
    ``stderr.txt`` as rank 0, and ``stdout.<N>.txt`` / ``stderr.<N>.txt`` as rank N when the job writes them."""

    def __init__(self, ucloud_id: str, folder: Path, is_final: Callable[[], bool], on_idle: Callable[[], None]) -> None:
        self.ucloud_id = ucloud_id
        self.folder = folder
        # file name -> (stream, rank, its tail)
        self.tails: dict[str, tuple[str, int, FileTail]] = {
            f"{stream}.txt": (stream, 0, FileTail(folder / f"{stream}.txt")) for stream in STREAMS
        }
        self._is_final = is_final
        self._on_idle = on_idle
        self.followers: list[Follower] = []
        self.finished = False
        self._task: asyncio.Task[None] | None = None

    def join(self) -> tuple[Follower, dict[str, int]]:
        """A new follower, and the offsets its history must end at (what it gets live starts there)."""
        follower = Follower()
        self.followers.append(follower)
        if self._task is None:
            self._discover()
            for _, _, tail in self.tails.values():  # the first follower: the reader starts at the files' end
                tail.inode, tail.offset = tail.identity()
            self._task = asyncio.ensure_future(self._run())
        if self.finished:
            follower.queue.put_nowait(None)
        return follower, {name: tail.offset for name, (_, _, tail) in self.tails.items()}

    def _discover(self) -> None:
        """Per-rank files the job has created since the last look (read from their start)."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            match = RANK_FILE.match(name)
            if match and name not in self.tails:
                self.tails[name] = (match.group(1), int(match.group(2)), FileTail(self.folder / name))

    def leave(self, follower: Follower) -> None:
        with contextlib.suppress(ValueError):
            self.followers.remove(follower)
        if not self.followers and self._task is not None:
            self._task.cancel()
            self._on_idle()

    def _publish(self, item: Chunk | None) -> None:
        for follower in list(self.followers):
            if follower.too_slow:
                continue
            try:
                follower.queue.put_nowait(item)
            except asyncio.QueueFull:  # it cannot keep up: end it rather than stall or buffer for ever
                follower.too_slow = True

    async def _run(self) -> None:
        since_final_check = FINAL_CHECK_SECONDS
        final = False
        while True:
            got_any = False
            for stream, rank, tail in list(self.tails.values()):
                try:
                    if not tail.changed():  # the usual tick: nothing new, no thread, no read
                        continue
                    inode, start, data = await asyncio.to_thread(tail.fetch)
                    text = tail.take(inode, start, data)  # no await between this and the publishing below
                except OSError as exc:
                    self._publish(("stderr", rank, f"[The provider cannot read your job's {tail.path.name}: {exc.strerror}]\n"))
                    log.warning("follow.unreadable", ucloud_id=self.ucloud_id, path=str(tail.path), error=str(exc))
                    final = True
                    text = ""
                for piece in chunks(text):
                    got_any = True
                    self._publish((stream, rank, piece))
            if final and not got_any:  # final, and both files drained
                self.finished = True
                self._publish(None)
                return
            since_final_check += POLL_SECONDS
            if since_final_check >= FINAL_CHECK_SECONDS and not final:
                since_final_check = 0.0
                self._discover()
                final = self._is_final()
                if final:
                    continue  # one more read: what the job wrote before it ended
            await asyncio.sleep(POLL_SECONDS)


class FollowHub:
    """The job readers of the running daemon, one per followed job, and one look a second at the job map
    for all of them (which of the followed jobs are final), however many jobs are followed."""

    def __init__(self, store: Store, jobs_directory: Path) -> None:
        self._store = store
        self._directory = jobs_directory
        self._outputs: dict[str, JobOutput] = {}
        self._final: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None

    def output(self, ucloud_id: str) -> JobOutput:
        found = self._outputs.get(ucloud_id)
        if found is None:

            def forget() -> None:
                self._outputs.pop(ucloud_id, None)
                self._final.discard(ucloud_id)

            found = self._outputs[ucloud_id] = JobOutput(
                ucloud_id, self._directory / ucloud_id, lambda: ucloud_id in self._final, forget
            )
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.ensure_future(self._watch_finals())
        return found

    async def _watch_finals(self) -> None:
        while self._outputs:
            ids = list(self._outputs)
            try:
                jobs = await asyncio.to_thread(self._store.get, ids)
            except Exception as exc:  # the store failing must not end anyone's stream early
                log.warning("follow.store_failed", error=str(exc))
            else:
                self._final.update(i for i in ids if i not in jobs or jobs[i].state.is_final)
            await asyncio.sleep(FINAL_CHECK_SECONDS)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    @property
    def followed_jobs(self) -> int:
        return len(self._outputs)


# -- the websocket ----------------------------------------------------------------------------------


async def follow(request: web.Request, hub: FollowHub, store: Store, provider_id: str) -> web.WebSocketResponse:
    """Serve one follow stream (the token and the provider id were checked before the upgrade)."""
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4 * 1024 * 1024)
    await ws.prepare(request)
    session = os.urandom(8).hex()
    try:
        async with asyncio.timeout(INIT_TIMEOUT):
            first = await ws.receive()
    except TimeoutError:
        await ws.close(message=b"no init frame")
        return ws
    if first.type != WSMsgType.TEXT:
        await ws.close()
        return ws
    try:
        init = parse_init(first.data, provider_id)
    except FollowRefused as exc:
        log.info("follow.refused", why=str(exc))
        await ws.send_json(end_frame("", session, 400))
        await ws.close()
        return ws
    job = (await asyncio.to_thread(store.get, [init.job_id])).get(init.job_id)
    if job is None:
        await ws.send_json(log_frame(init.stream_id, session, "stderr", "This job is not known to the provider.\n"))
        await ws.send_json(end_frame(init.stream_id, session, 404))
        await ws.close()
        return ws
    output = hub.output(init.job_id)
    follower, offsets = output.join()
    log.info("follow.started", ucloud_id=init.job_id, followers=len(output.followers))
    reader = asyncio.ensure_future(_read_client(ws))
    try:
        for name, (stream, rank, tail) in list(output.tails.items()):
            if name not in offsets:  # appeared after this follower joined: it comes live, from its start
                continue
            try:
                history = await asyncio.to_thread(read_history, tail.path, offsets[name])
            except FileNotFoundError:
                history = ""
            except OSError as exc:
                history = f"[The provider cannot read your job's {tail.path.name}: {exc.strerror}]\n"
            for piece in chunks(history):
                await ws.send_json(log_frame(init.stream_id, session, stream, piece, rank))
        while True:
            getter = asyncio.ensure_future(follower.queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:  # Core closed the socket or cancelled
                getter.cancel()
                if reader.result() == "cancel":
                    await ws.send_json(end_frame(init.stream_id, session))
                break
            item = getter.result()
            if item is None:
                await ws.send_json(end_frame(init.stream_id, session))
                break
            stream, rank, text = item
            await ws.send_json(log_frame(init.stream_id, session, stream, text, rank))
            if follower.too_slow and follower.queue.empty():
                await ws.send_json(log_frame(init.stream_id, session, "stderr", "[This view fell too far behind; reopen it to follow again]\n"))
                await ws.send_json(end_frame(init.stream_id, session))
                break
    except (ConnectionResetError, RuntimeError) as exc:  # the socket went away while sending
        log.info("follow.disconnected", ucloud_id=init.job_id, error=str(exc))
    finally:
        output.leave(follower)
        reader.cancel()
        await ws.close()
    return ws


async def _read_client(ws: web.WebSocketResponse) -> str:
    """Wait for Core to close the socket ("closed") or to cancel the stream ("cancel")."""
    async for message in ws:
        if message.type == WSMsgType.TEXT and is_cancel(message.data):
            return "cancel"
    return "closed"
