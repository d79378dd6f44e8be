"""What the admin's documents promise exists in the code: log events, metrics, job variables.

An admin writes alerts and log searches from docs/admin.md and README.md; a renamed event or metric
would silently break them. Each test reads the documents, so a name that disappears from the code (or
a new job variable nobody documented) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from provider.metrics import Metrics, Snapshot, UsageSnapshot

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "admin.md").read_text() + (ROOT / "README.md").read_text()
SOURCE = "\n".join(path.read_text() for path in sorted((ROOT / "provider").rglob("*.py")))
NOT_EVENTS = {"native.logs", "docker.io"}  # a field of Core's JobSupport and a Debian package, not log events
FILE_SUFFIXES = {"toml", "sh", "txt", "md", "py", "env", "service", "conf", "json", "yaml", "sqlite3", "jsonl"}


def documented_log_events() -> set[str]:
    names = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", DOCS))
    return {
        n for n in names if n.rsplit(".", 1)[1] not in FILE_SUFFIXES and not n.startswith("slurm.conf") and n not in NOT_EVENTS
    }


def test_documents_name_log_events() -> None:
    assert len(documented_log_events()) >= 30  # the reader below still finds them


def test_every_documented_log_event_is_logged_by_the_code() -> None:
    missing = sorted(e for e in documented_log_events() if f'"{e}"' not in SOURCE)
    assert missing == []


def exported_metric_names() -> set[str]:
    """The names a scrape of a running daemon shows (every family, labels filled in)."""
    metrics = Metrics()
    usage = UsageSnapshot({"cpu": 1}, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0)
    metrics.read_from(lambda: Snapshot({"squeue": 1}, {"squeue": 0}, {"RUNNING": 1}, 0, 0.0, 0, 0, 0, 0, 0, usage))
    metrics.requests.labels("GET", "/healthz", "200").inc()
    metrics.observe_slurm("squeue", 0.01)
    text = metrics.render().decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_documented_metric_is_exported() -> None:
    documented = set(re.findall(r"\b(ucloud_provider_[a-z_]+)", DOCS))
    assert documented, "the admin guide names no metric"
    assert sorted(documented - exported_metric_names()) == []


def test_job_variables_the_code_sets_are_the_ones_documented() -> None:
    admin = (ROOT / "docs" / "admin.md").read_text()
    submission = (ROOT / "provider" / "submission.py").read_text()  # where a job's environment is made
    in_code = set(re.findall(r'"(UCLOUD_[A-Z_]+)"', submission)) - {"UCLOUD_PARAM_"}
    in_docs = set(re.findall(r"`(UCLOUD_[A-Z_]+)`", admin)) - {"UCLOUD_PARAM_"}
    assert sorted(in_code - in_docs) == []  # set for jobs, never explained to admins
    assert sorted(in_docs - in_code) == []  # promised to admins, never set
