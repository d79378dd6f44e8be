"""UCloud paths -> cluster paths, through the admin's table of prefixes (``[files.paths]``).

Pure. A UCloud path is ``/<drive id>/<folder>/...``; the cluster does not have it. The admin's table
says where each drive (or folder of one) lives here; the longest prefix matching whole components wins.
Nothing outside a mapped prefix is ever reachable: ``..`` is refused rather than resolved, and the
result is checked to lie under the prefix's cluster path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path, PurePosixPath


class UnmappedPath(ValueError):
    """A UCloud path this cluster cannot serve; the message says why, for the user."""


def ucloud_components(path: str) -> tuple[str, ...]:
    """The components of a UCloud path; empty and ``.`` components collapse, as UCloud's own parser does.

    ``..`` is refused: Core never sends it, so one is a forged or broken path, not a path to resolve.
    """
    if not path.startswith("/"):
        raise UnmappedPath(f"{path!r} is not an absolute UCloud path")
    if "\x00" in path or "\n" in path:
        raise UnmappedPath("A file path contains a NUL or newline character")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnmappedPath(f"{path!r} contains '..'")
    if not parts:
        raise UnmappedPath("'/' is not a file or folder in UCloud")
    return parts


def clean_ucloud_prefix(prefix: str) -> str:
    """A ``[files.paths]`` key in its one canonical spelling (``/1234/Home``); raises ValueError."""
    try:
        return "/" + "/".join(ucloud_components(prefix))
    except UnmappedPath as exc:
        raise ValueError(f"{prefix!r}: a UCloud path prefix must look like '/1234' or '/1234/Folder' ({exc})") from None


def clean_cluster_root(prefix: str, root: Path) -> Path:
    """A ``[files.paths]`` value: an absolute, normalised cluster path; raises ValueError."""
    text = str(root)
    if "\x00" in text or not root.is_absolute() or ".." in PurePosixPath(text).parts:
        raise ValueError(f"{prefix!r} = {text!r}: the cluster path must be absolute, without '..'")
    return Path(posixpath.normpath(text))


def map_ucloud_path(path: str, table: Mapping[str, Path]) -> Path:
    """The cluster path of UCloud ``path`` under the longest matching prefix of ``table``."""
    parts = ucloud_components(path)
    for cut in range(len(parts), 0, -1):
        root = table.get("/" + "/".join(parts[:cut]))
        if root is not None:
            mapped = Path(posixpath.normpath(posixpath.join(str(root), *parts[cut:])))
            if mapped != root and root not in mapped.parents:  # defence in depth; '..' is refused above
                raise UnmappedPath(f"{path!r} leaves its mapped folder")
            return mapped
    raise UnmappedPath(
        f"The file {path} is not available on this cluster: its drive is not one of the folders this "
        "provider mounts (ask the provider's administrators, or copy the file to a drive of this provider)"
    )
