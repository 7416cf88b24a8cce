"""A command on a terminal of its own (a pty), as a person at a shell runs it: the tests
of what a terminal shows (a progress bar) and what Ctrl-C does."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
import sys
import termios
from pathlib import Path

# A guard, not a wait: every step below ends by itself long before it.
GUARD_S = 120
CTRL_C = b"\x03"
# The child makes the pty its controlling terminal (a session of its own, as a login
# shell's job has), so that Ctrl-C typed there reaches its whole process group. SIGINT
# is set back to its default, as a shell does for a command in the foreground: a test
# run started in the background (nohup, `&` in a script) ignores it, and a command that
# starts with SIGINT ignored keeps ignoring it.
_SESSION = (
    "import os, signal, sys; os.login_tty(0); signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway', *sys.argv[1:]])"
)


class Terminal:
    """``aleacc-gateway ARGS`` on a pty: what it shows, keys typed at it, how it ended."""

    def __init__(self, master: int, process: asyncio.subprocess.Process) -> None:
        self._master = master
        self.process = process
        self.shown = b""

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Terminal:
        master, slave = os.openpty()
        # A terminal's size, as a window has one (a pty starts at 0 columns).
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        # No echo: the screen holds only what the command wrote (not "^C").
        attributes = termios.tcgetattr(slave)
        attributes[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        os.set_blocking(master, False)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _SESSION,
            *args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, **(env or {})},
        )
        os.close(slave)
        return cls(master, process)

    async def shows(self, text: str) -> None:
        """Wait until the screen has shown ``text``."""
        async with asyncio.timeout(GUARD_S):
            while text.encode() not in self.shown:
                if not await self._read():
                    raise AssertionError(f"ended without showing {text!r}: {self.text}")

    def type(self, keys: bytes) -> None:
        os.write(self._master, keys)

    async def ended(self) -> int:
        """Wait for the command to end; its exit code (everything it showed is read)."""
        async with asyncio.timeout(GUARD_S):
            while await self._read():
                pass
            return await self.process.wait()

    @property
    def text(self) -> str:
        return self.shown.decode(errors="replace")

    def session(self) -> list[int]:
        """The processes left in the command's session (it leads it: its id is the pid)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # ended while being read
            # After the command name: state, ppid, pgrp, session.
            if fields[0] != "Z" and int(fields[3]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    async def _read(self) -> bool:
        """Read what is there; False once the terminal is closed (every writer gone)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self._master, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(self._master)
        try:
            data = os.read(self._master, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # Linux's word for "the other side is closed"
                raise
            return False
        self.shown += data
        return bool(data)

    def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        os.close(self._master)
