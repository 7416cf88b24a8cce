"""What the secret and the listener's certificates share: files that change under a
running gateway, watched by a poll that re-reads them and reports each outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ReloadResult = Literal["loaded", "unchanged", "error"]
OnReload = Callable[[ReloadResult, "str | None"], None]


@dataclass(frozen=True, slots=True)
class FileStamp:
    inode: int
    device: int
    size: int
    mtime_ns: int
    mode: int  # a chmod that makes the file unreadable changes nothing else


def file_stamp(path: Path) -> FileStamp | None:
    """What tells a changed file: None when it cannot be stat()ed."""
    # stat() follows symlinks, so a Kubernetes "..data" symlink swap shows as a new inode.
    try:
        st = path.stat()
    except OSError:
        return None
    return FileStamp(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_mode)


class Reloading:
    """A source that ``refresh()`` re-reads; ``watch`` polls it, ``on_reload`` hears of
    every load and every failure."""

    def __init__(self, on_reload: OnReload | None) -> None:
        self._on_reload = on_reload

    def refresh(self) -> ReloadResult:
        raise NotImplementedError

    async def watch(self, interval_s: float) -> None:
        """Re-read every ``interval_s`` until cancelled (run as a task)."""
        while True:
            await asyncio.sleep(interval_s)
            self.refresh()

    def _report(self, result: ReloadResult, problem: str | None) -> ReloadResult:
        if self._on_reload is not None:
            self._on_reload(result, problem)
        return result
