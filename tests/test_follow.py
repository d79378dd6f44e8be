"""The follow stream's parts without Slurm: Core's frames, reading a growing file, one reader for many."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from helpers import wait_for
from provider import follow
from provider.follow import (
    FileTail,
    FollowRefused,
    JobOutput,
    end_frame,
    is_cancel,
    log_frame,
    parse_init,
    read_history,
)
from provider.ucloud.devcore import job_body


def test_cores_init_frame_names_the_job() -> None:
    frame = {"call": "jobs.provider.slurm.follow", "streamId": "ignored", "payload": {"type": "init", "job": job_body("77")},
             "bearer": "", "project": None}
    init = parse_init(json.dumps(frame), "slurm")
    assert (init.job_id, init.stream_id) == ("77", "ignored")


@pytest.mark.parametrize(
    "frame",
    ["not json", "[]", '{"call": "jobs.provider.other.follow", "payload": {"type": "init", "job": {"id": "1"}}}',
     '{"call": "jobs.provider.slurm.follow", "payload": {"type": "cancel"}}',
     '{"call": "jobs.provider.slurm.follow", "payload": {"type": "init", "job": {"id": 5}}}'],
)
def test_anything_else_is_refused(frame: str) -> None:
    with pytest.raises(FollowRefused):
        parse_init(frame, "slurm")


def test_frames_are_gos_wsresponsemessage_of_joblogmessage() -> None:
    assert log_frame("s", "x", "stderr", "oops") == {
        "type": "message", "streamId": "s",
        "payload": {"streamId": "x", "rank": 0, "stdout": None, "stderr": "oops", "channel": None},
    }
    assert end_frame("s", "x")["type"] == "response" and end_frame("s", "x")["status"] == 200
    assert is_cancel('{"call": "c", "payload": {"type": "cancel", "streamId": "s"}}') and not is_cancel('{"type": "init"}')


def test_a_tail_decodes_across_reads_and_starts_over_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "stdout.txt"
    tail = FileTail(path)
    assert tail.take(*tail.fetch()) == ""  # not there yet
    path.write_bytes("é".encode()[:1])  # half a character
    assert tail.take(*tail.fetch()) == ""
    with path.open("ab") as f:
        f.write("é".encode()[1:] + b"\xff\n")
    assert tail.take(*tail.fetch()) == "é\ufffd\n"
    path.write_bytes(b"n\n")  # truncated (shorter than what was read) and rewritten
    assert tail.take(*tail.fetch()) == "n\n"
    path.rename(tmp_path / "stdout.txt.1")  # rotated: a new file, already longer than what was read
    path.write_bytes(b"rotated, and longer\n")
    assert tail.changed() and tail.take(*tail.fetch()) == "rotated, and longer\n"
    assert not tail.changed() and tail.take(*tail.fetch()) == ""


def test_history_of_a_huge_file_says_what_was_left_out(tmp_path: Path) -> None:
    path = tmp_path / "stdout.txt"
    path.write_bytes(b"a" * 100 + b"b" * 10)
    assert read_history(path, 110, limit=10) == "[... 100 earlier bytes of stdout.txt are not shown here ...]\n" + "b" * 10


async def test_a_follower_that_falls_behind_is_ended_and_the_others_get_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "QUEUE_FRAMES", 4)  # a short queue: a few reads fill it
    folder = tmp_path / "jobs" / "9"
    folder.mkdir(parents=True)
    final = False
    output = JobOutput("9", folder, lambda: final, lambda: None)
    slow, _ = output.join()
    fast, _ = output.join()
    got: list[str] = []

    async def consume() -> None:
        while (item := await fast.queue.get()) is not None:
            got.append(item[2])

    consumer = asyncio.ensure_future(consume())
    with (folder / "stdout.txt").open("a") as f:
        for n in range(12):  # a frame a read (every 0.2 s): more frames than a queue holds
            f.write(f"{n}\n")
            f.flush()
            await asyncio.sleep(0.3)
    final = True
    await asyncio.wait_for(consumer, 30)
    assert slow.too_slow and slow.queue.qsize() == 4  # bounded: it holds no more than that
    assert "".join(got) == "".join(f"{n}\n" for n in range(12))
    await wait_for(lambda: output.finished, 5)


async def test_per_rank_files_reach_core_with_their_rank(tmp_path: Path) -> None:
    folder = tmp_path / "jobs" / "8"
    folder.mkdir(parents=True)
    (folder / "stdout.txt").write_text("batch\n")
    output = JobOutput("8", folder, lambda: False, lambda: None)
    follower, offsets = output.join()
    assert offsets == {"stdout.txt": 6, "stderr.txt": 0}  # history ends where live begins
    (folder / "stdout.1.txt").write_text("node two\n")  # srun --output=stdout.%t.txt, task 1
    (folder / "stderr.0.txt").write_text("node one complains\n")
    (folder / "stdout.x.txt").write_text("not a rank\n")
    got = {await asyncio.wait_for(follower.queue.get(), 10) for _ in range(2)}
    assert got == {("stdout", 1, "node two\n"), ("stderr", 0, "node one complains\n")}
    output.leave(follower)
