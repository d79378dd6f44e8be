"""The job's folder: the environment file sbatch reads, and the ACL that hands the folder to its owner."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from provider.jobfolder import acl_entries, base_environment, environment_file, prepare_folder
from provider.submission import RequestRefused, Submission


def test_values_with_commas_newlines_and_quotes_are_kept_whole() -> None:
    data = environment_file({"UCLOUD_PARAM_X": "a,b=c\nd 'e' \"f\" $(id)", "UCLOUD_JOB_ID": "5"})
    assert data == b"UCLOUD_PARAM_X=a,b=c\nd 'e' \"f\" $(id)\x00UCLOUD_JOB_ID=5\x00"


def test_a_nul_in_a_value_is_refused_since_it_would_start_another_variable() -> None:
    with pytest.raises(RequestRefused, match="UCLOUD_PROJECT contains a NUL"):
        environment_file({"UCLOUD_PROJECT": "p\x00LD_PRELOAD=/tmp/x.so"})


def test_text_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(RequestRefused, match="cannot be encoded"):
        environment_file({"UCLOUD_USERNAME": "donna\udc80"})


def test_a_bad_variable_name_is_refused() -> None:
    with pytest.raises(RequestRefused):
        environment_file({"A=B": "x"})


def test_the_acl_names_the_owner_and_masks_the_rest() -> None:
    blob = acl_entries(1234, 0o7, 0o5, 0o5)
    version, = struct.unpack_from("<I", blob)
    entries = [struct.unpack_from("<HHI", blob, 4 + 8 * n) for n in range((len(blob) - 4) // 8)]
    assert version == 2
    assert entries == [(0x01, 7, 0xFFFFFFFF), (0x02, 5, 1234), (0x04, 5, 0xFFFFFFFF), (0x10, 5, 0xFFFFFFFF),
                       (0x20, 0, 0xFFFFFFFF)]


def plan(tmp_path: Path, script: Path, user: str | None = None) -> Submission:
    return Submission("5", tmp_path / "jobs" / "5", script, ("sbatch",), {}, user, "", 60)


def test_a_refused_folder_is_removed_again(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n")
    with pytest.raises(RequestRefused, match="NUL"):
        prepare_folder(plan(tmp_path, script), {"UCLOUD_X": "\x00"})
    assert not (tmp_path / "jobs" / "5").exists()
    with pytest.raises(RequestRefused, match="no user"):
        prepare_folder(plan(tmp_path, script, user="no-such-user-here"), {})
    assert not (tmp_path / "jobs" / "5").exists()


def test_the_folder_holds_the_script_and_the_environment(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    written, env_file, created = prepare_folder(plan(tmp_path, script), {"UCLOUD_JOB_ID": "5"})
    assert created and written.read_text() == script.read_text() and os.access(written, os.X_OK)
    assert env_file.read_bytes() == b"UCLOUD_JOB_ID=5\x00"


def test_a_job_gets_path_home_and_its_users_names() -> None:
    """sbatch --export-file hands a job only what the file holds: without these, srun's tasks find no program."""
    root = base_environment("root", "/opt/site/bin:/usr/bin")
    assert root == {"PATH": "/opt/site/bin:/usr/bin", "HOME": "/root", "USER": "root", "LOGNAME": "root",
                    "SHELL": root["SHELL"]}
    with pytest.raises(RequestRefused, match="no user"):
        base_environment("no-such-user-here", "/usr/bin")
