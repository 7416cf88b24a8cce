"""The API secret: loaded from a file or the environment, re-read when the file changes.

The secret is decoded into the HMAC key under ``signing.secret_encoding`` as it is
read. A reload that finds an empty, unreadable or undecodable file keeps the last good
key, so a half-finished rotation never takes the gateway down.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import Settings, TenantSettings
from .reloading import FileStamp, OnReload, Reloading, ReloadResult, file_stamp
from .signing import decode_secret


class SecretError(Exception):
    """The secret cannot be used; the message names the source, never the value."""


class SecretUnavailable(SecretError):
    """No secret could be read (not there, empty, unreadable): perhaps not mounted yet."""


class SecretInvalid(SecretError):
    """The secret is there but can never be the key (it does not decode under
    ``secret_encoding``, or its file is a directory): a configuration error, not a
    mount that is still on its way."""


def read_secret(settings: TenantSettings, environ: Mapping[str, str] = os.environ) -> bytes:
    """Read the configured secret once; raise SecretUnavailable when it cannot be had."""
    if settings.secret_env is not None:
        value = environ.get(settings.secret_env, "").strip()
        if not value:
            raise SecretUnavailable(f"environment variable {settings.secret_env} is unset or empty")
        return value.encode("utf-8")
    assert settings.secret_file is not None  # noqa: S101 - guaranteed by config validation
    return _read_file(settings.secret_file)


def load_key(settings: TenantSettings, environ: Mapping[str, str] = os.environ) -> bytes:
    """Read the secret and decode it into the HMAC key; SecretUnavailable if it cannot be
    read, SecretInvalid if it does not decode."""
    secret = read_secret(settings, environ)
    try:
        return decode_secret(secret, settings.scheme.secret_encoding)
    except ValueError as exc:
        raise SecretInvalid(f"{secret_source(settings)} {exc}") from None


@dataclass(frozen=True, slots=True)
class LoadedKey:
    """A tenant's HMAC key as it was read, and its file just before (None: from the
    environment, or a file that could not be stat()ed)."""

    key: bytes
    stamp: FileStamp | None


def loaded_key(settings: TenantSettings, environ: Mapping[str, str] = os.environ) -> LoadedKey:
    """The key, for a store to start from; raises as ``load_key``. The file is stamped
    before it is read, so a change after the read is seen at the next poll."""
    stamp = file_stamp(settings.secret_file) if settings.secret_file is not None else None
    return LoadedKey(load_key(settings, environ), stamp)


def secret_source(settings: TenantSettings) -> str:
    """Where the secret comes from, for messages: never its value."""
    if settings.secret_env is not None:
        return f"environment variable {settings.secret_env}"
    return f"secret file {settings.secret_file}"


def _read_file(path: Path) -> bytes:
    try:
        # A trailing newline is an artefact of `echo` and editors, never part of the key.
        value = path.read_bytes().strip()
    except IsADirectoryError:
        # Never a mount still on its way: a Secret volume is a directory holding the file.
        raise SecretInvalid(
            f"secret file {path} is a directory: name the file in it that holds the secret"
        ) from None
    except OSError as exc:
        raise SecretUnavailable(f"secret file {path}: {exc.strerror or 'unreadable'}") from None
    if not value:
        raise SecretUnavailable(f"secret file {path} is empty")
    return value


class SecretStore(Reloading):
    """Holds the current secret; ``refresh`` re-reads the file when it has changed."""

    def __init__(
        self,
        settings: TenantSettings,
        environ: Mapping[str, str] = os.environ,
        on_reload: OnReload | None = None,
        loaded: LoadedKey | None = None,
    ) -> None:
        """``loaded``: the key already read (serve's pre-flight); else it is read here."""
        super().__init__(on_reload)
        self._settings = settings
        self._environ = environ
        self._secret: bytes | None = None
        self._stamp: FileStamp | None = None
        # When a new secret last replaced the one in use (time.monotonic()); None: never.
        self.rotated_at: float | None = None
        self.problem: str | None = None
        if loaded is None:
            self.refresh(force=True)
        else:
            self._take(loaded.key, loaded.stamp)

    @property
    def current(self) -> bytes | None:
        """The last good HMAC key, or None if none was ever loaded."""
        return self._secret

    @property
    def watches_file(self) -> bool:
        """Whether the secret comes from a file that can change under us."""
        return self._settings.secret_file is not None

    def refresh(self, force: bool = False) -> ReloadResult:
        """Re-read the secret if its file changed (or ``force``); keep the old one on error."""
        path = self._settings.secret_file
        stamp = file_stamp(path) if path is not None else None
        unchanged = stamp is not None and stamp == self._stamp
        if not force and unchanged and self.problem is None and self._secret is not None:
            # Nothing to re-read. A source with a problem is read again at every poll,
            # even when the file came back exactly as it was (a mount hiccup, a file
            # moved away and back): readiness follows the source's health.
            return "unchanged"
        try:
            value = load_key(self._settings, self._environ)
        except SecretError as exc:
            # Keep the stamp unchanged so a file fixed in place is retried next poll.
            self.problem = str(exc)
            return self._report("error", str(exc))
        return self._take(value, stamp)

    def _take(self, value: bytes, stamp: FileStamp | None) -> ReloadResult:
        """``value`` read from the file as ``stamp`` says it was: the current key."""
        self._stamp = stamp
        self.problem = None
        if value == self._secret:
            return "unchanged"
        if self._secret is not None:
            self.rotated_at = time.monotonic()  # a new secret replaced a working one
        self._secret = value
        return self._report("loaded", None)


def secret_stores(
    settings: Settings,
    environ: Mapping[str, str] = os.environ,
    on_reload: Callable[[str, ReloadResult, str | None], None] | None = None,
    loaded: Mapping[str, LoadedKey] | None = None,
) -> dict[str, SecretStore]:
    """A store for every tenant's secret, by tenant name; ``on_reload`` hears which.
    ``loaded``: the keys already read, by tenant name (the others are read here)."""
    return {
        tenant.name: SecretStore(
            tenant,
            environ,
            None if on_reload is None else _for_tenant(on_reload, tenant.name),
            (loaded or {}).get(tenant.name),
        )
        for tenant in settings.every_tenant
    }


def _for_tenant(on_reload: Callable[[str, ReloadResult, str | None], None], name: str) -> OnReload:
    return lambda result, problem: on_reload(name, result, problem)
