"""The one check of file names that a pipeline may give for files written inside its run store."""

from __future__ import annotations

from pathlib import Path


def is_plain_file_name(name: str) -> bool:
    """A file name, not a path: checked at load, since the store refuses anything else only at
    export, after the whole synthesis. "." and ".." are their own ``Path.name`` but name the store
    or its parent; a backslash is a separator on Windows only, so Path on POSIX would not see it."""
    return name not in ("", ".", "..") and "\\" not in name and Path(name).name == name


def file_name_problems(table: str, names: dict[str, str]) -> list[str]:
    """``table.key: ...`` for each non-empty name of ``names`` (key -> name) that is not plain."""
    return [
        f"{table}.{key}: a file name inside the run store, not a path, got {name!r}"
        for key, name in names.items()
        if name and not is_plain_file_name(name)
    ]
