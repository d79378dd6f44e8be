"""A job's folder: the admin's script, the job's environment file, and access for the user who runs it.

The environment reaches the job through ``sbatch --export-file``: NAME=value entries separated by NUL,
so a value may hold commas, newlines or quotes (``--export=A=x,y`` would split it) and never passes
through env(1), a shell, or sudo's command line.

When jobs run as their owner, the owner must read the script and write output in the folder. A daemon
running as root hands both over with chown; a daemon running as its own user (the documented setup,
whose sudo rule allows sbatch and scancel only) cannot, so it grants the owner access with a POSIX ACL
on files it owns, which needs no privilege, and reads the job's output through the folder's default
ACL, which every file the job creates there inherits.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

import structlog

from provider.submission import RequestRefused, Submission

log = structlog.get_logger(__name__)

SCRIPT_NAME = "job.sh"
ENV_FILE_NAME = "ucloud.env"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Linux's POSIX ACL extended attribute (linux/posix_acl_xattr.h): version 2, then (tag, perm, id) entries.
_ACL_XATTR = "system.posix_acl_access"
_ACL_DEFAULT_XATTR = "system.posix_acl_default"  # inherited by files created in a folder
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


def environment_file(env: Mapping[str, str]) -> bytes:
    """The bytes of an ``--export-file``: ``NAME=value`` entries, each ended by NUL.

    A NUL inside a value would start a new entry (another variable), so it is refused, as is text
    that is not encodable (a lone surrogate).
    """
    parts: list[bytes] = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise RequestRefused(f"{name!r} cannot name an environment variable")
        if "\x00" in value:
            raise RequestRefused(f"The value of {name} contains a NUL character")
        try:
            parts.append(f"{name}={value}".encode() + b"\x00")
        except UnicodeEncodeError:
            raise RequestRefused(f"The value of {name} contains characters that cannot be encoded") from None
    return b"".join(parts)


def base_environment(unix_user: str | None, path: str) -> dict[str, str]:
    """The variables every process needs, for the user the job runs as (``None``: the daemon's own).

    sbatch's ``--export-file`` hands a job only the variables in the file (and Slurm's ``SLURM_*``):
    without these, the batch script's own bash finds programs on its built-in default path, but
    every program it starts (``srun``'s tasks among them) gets no PATH and no HOME.
    """
    try:
        entry = pwd.getpwnam(unix_user) if unix_user is not None else pwd.getpwuid(os.geteuid())
    except KeyError:
        raise RequestRefused(f"The cluster has no user {unix_user!r} to run your job") from None
    return {
        "PATH": path,
        "HOME": entry.pw_dir,
        "USER": entry.pw_name,
        "LOGNAME": entry.pw_name,
        "SHELL": entry.pw_shell or "/bin/sh",
    }


def acl_entries(owner_uid: int, perms_owner: int, perms_user: int, perms_group: int) -> bytes:
    """The ``system.posix_acl_access`` value granting the file's owner, one named user and the group."""
    entries = [
        (_USER_OBJ, perms_owner, _NO_ID),
        (_USER, perms_user, owner_uid),
        (_GROUP_OBJ, perms_group, _NO_ID),
        (_MASK, perms_user | perms_group, _NO_ID),
        (_OTHER, 0, _NO_ID),
    ]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def prepare_folder(plan: Submission, env: Mapping[str, str]) -> tuple[Path, Path, bool]:
    """Create the job's folder with ``job.sh`` and ``ucloud.env``, usable by whoever runs the job.

    Returns (script, environment file, whether the folder was created now). On a refusal the folder is
    removed again if this call created it.
    """
    created = not plan.folder.exists()
    try:
        plan.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        script = plan.folder / SCRIPT_NAME
        try:
            shutil.copyfile(plan.script, script)
        except OSError as exc:
            log.error("job.script_unreadable", script=str(plan.script), error=str(exc))
            raise RequestRefused("This application is misconfigured on the provider (its script cannot be read)") from None
        script.chmod(0o750)
        env_file = plan.folder / ENV_FILE_NAME
        env_file.write_bytes(environment_file(env))
        env_file.chmod(0o640)
        if plan.unix_user is not None:
            _hand_over(plan.unix_user, plan.folder, script, env_file)
    except OSError as exc:  # the jobs directory is full, read-only or not ours
        log.error("job.folder_failed", folder=str(plan.folder), error=str(exc))
        if created:
            remove_folder(plan.folder)
        raise RequestRefused("The provider cannot prepare your job's folder right now; please try again later") from None
    except BaseException:
        if created:
            remove_folder(plan.folder)
        raise
    return script, env_file, created


def _hand_over(user: str, folder: Path, script: Path, env_file: Path) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RequestRefused(f"The cluster has no user {user!r} to run your job") from None
    if os.geteuid() == 0:
        for path in (folder, script, env_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return
    try:
        os.setxattr(folder, _ACL_XATTR, acl_entries(entry.pw_uid, 0o7, 0o7, 0o5))
        os.setxattr(script, _ACL_XATTR, acl_entries(entry.pw_uid, 0o7, 0o5, 0o5))
        os.setxattr(env_file, _ACL_XATTR, acl_entries(entry.pw_uid, 0o6, 0o4, 0o4))
        # What the job creates here (stdout.txt, stderr.txt) is the owner's; this default ACL lets the
        # daemon's own user read it, so UCloud's job page can follow the output (provider/follow.py).
        os.setxattr(folder, _ACL_DEFAULT_XATTR, acl_entries(os.geteuid(), 0o6, 0o4, 0o0))
    except OSError as exc:
        log.error("job.folder_acl_failed", folder=str(folder), user=user, error=str(exc))
        raise RequestRefused(
            "The provider cannot give your job's folder to your user on this cluster; the administrator must "
            "check [jobs] directory (it needs POSIX ACLs when the daemon does not run as root)"
        ) from None


def remove_folder(folder: Path) -> None:
    """Remove a refused job's folder; what cannot be removed is logged, never raised."""

    def report(_function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
        log.warning("job.folder_not_removed", path=path, error=str(exc_info[1]))

    shutil.rmtree(folder, onerror=report)  # onerror: Python 3.11 has no onexc yet
