"""TLS on the proxy listener: a context from PEM files, re-read when they change, and
the identity a client certificate carries.

The ssl module speaks the protocol (TLS 1.2 and later, its secure defaults: no
compression, no renegotiation). cryptography reads what ssl cannot tell us about a
certificate file before it is used: whether it holds a certificate, and when it expires.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TlsSettings
from .reloading import FileStamp, OnReload, Reloading, ReloadResult, file_stamp

# check-config warns when the certificate expires sooner than this.
EXPIRY_WARNING_S = 14 * 86400


class TlsError(Exception):
    """A TLS file cannot be used; the message is one line naming the setting."""


class TlsFileMissing(TlsError):
    """A TLS file is not there (yet): check-config, run where it is not mounted, warns."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A server context and the expiry of the certificate it presents."""

    context: ssl.SSLContext
    not_after: datetime.datetime
    stamps: tuple[FileStamp | None, ...]  # the files as they were just before they were read


def load(tls: TlsSettings) -> Loaded:
    """Build the proxy listener's context from ``tls``; TlsError names the bad file."""
    # Imported here: its memory (bench/README.md) is paid only by a gateway with TLS.
    from cryptography import x509

    stamps = file_stamps(tls)
    cert_setting = f"server.tls_cert_file {tls.cert_file}"
    key_setting = f"server.tls_key_file {tls.key_file}"
    try:
        chain = x509.load_pem_x509_certificates(_read(tls.cert_file, cert_setting))
    except ValueError:
        raise TlsError(f"{cert_setting}: no PEM certificate in it") from None
    _read(tls.key_file, key_setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        # A password (even empty) keeps OpenSSL from prompting on the terminal for an
        # encrypted key.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(f"{key_setting}: does not match the certificate") from None
        raise TlsError(f"{key_setting}: not an unencrypted PEM private key") from None
    except OSError as exc:  # changed between the reads
        raise TlsError(f"{key_setting}: {exc.strerror or 'unreadable'}") from None
    if tls.client_ca_file is not None:
        ca_setting = f"server.tls_client_ca_file {tls.client_ca_file}"
        _read(tls.client_ca_file, ca_setting)
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError):
            raise TlsError(f"{ca_setting}: no PEM certificate in it") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return Loaded(context, chain[0].not_valid_after_utc, stamps)


def file_stamps(tls: TlsSettings) -> tuple[FileStamp | None, ...]:
    """What tells that one of the pair's files (or the CA's) changed."""
    return tuple(file_stamp(path) for path in tls.files)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise TlsFileMissing(f"{setting}: {exc.strerror}") from None
    except OSError as exc:
        raise TlsError(f"{setting}: {exc.strerror or 'unreadable'}") from None


def expiry_problems(not_after: datetime.datetime, now: datetime.datetime) -> tuple[str, str]:
    """(error, warning) about the certificate's expiry for check-config; "" for none."""
    left = (not_after - now).total_seconds()
    when = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if left <= 0:
        return f"server.tls_cert_file: the certificate expired on {when}", ""
    if left < EXPIRY_WARNING_S:
        return "", f"server.tls_cert_file: the certificate expires on {when}"
    return "", ""


def certificate_names(peercert: dict[str, Any] | None) -> tuple[str, ...]:
    """A client certificate's identities: its DNS and URI SANs (SPIFFE ids are URIs),
    or its subject's common name when it has no such SAN."""
    if not peercert:
        return ()
    names = tuple(value for kind, value in peercert.get("subjectAltName", ()) if kind in _SANS)
    if names:
        return names
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return (value,)
    return ()


_SANS = frozenset({"DNS", "URI"})


def name_allowed(names: Iterable[str], allowed: frozenset[str] | None) -> bool:
    """Whether any of a client's names is in ``allowed`` (None: no name check)."""
    return allowed is None or any(name in allowed for name in names)


class _HandshakeWatch(ssl.SSLObject):
    """An SSLObject that reports a failed handshake (``ssl.SSLContext.sslobject_class``)."""

    on_failure: Callable[[str], None] = staticmethod(lambda reason: None)

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not done yet: more bytes to come
        except ssl.SSLError as exc:  # no or an untrusted client certificate, a protocol...
            self.on_failure(str(exc.reason or type(exc).__name__))
            raise


class _Rotating(ssl.SSLContext):
    """The context the listener is created with: every connection's TLS object comes
    from the store's current context, so a re-read certificate serves the next
    handshake, while open connections keep theirs."""

    _store: CertificateStore
    _watch: type[_HandshakeWatch]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        current = self._store.context
        current.sslobject_class = self._watch
        return current.wrap_bio(incoming, outgoing, server_side, server_hostname, session)


class CertificateStore(Reloading):
    """The listener's current context; ``refresh`` rebuilds it when a file changed.

    A new pair that cannot be used keeps the last good context (new connections go on
    getting the old certificate) and sets ``problem`` until the files are fixed.
    """

    def __init__(
        self,
        tls: TlsSettings,
        on_reload: OnReload | None = None,
        loaded: Loaded | None = None,
    ) -> None:
        """``loaded``: the first pair, already loaded (serve's pre-flight); else it is
        loaded here, and one that cannot be used raises TlsError."""
        super().__init__(on_reload)
        self._tls = tls
        loaded = loaded or load(tls)
        self._stamps = loaded.stamps
        self.context = loaded.context
        self.not_after = loaded.not_after
        self.problem: str | None = None
        self._failed_once = False

    def listener_context(self, on_handshake_failed: Callable[[str], None]) -> ssl.SSLContext:
        """The context to create the listener with (an event loop calls its wrap_bio for
        each connection): the current certificate at every handshake, and
        ``on_handshake_failed(reason)`` for each handshake that fails."""
        rotating = _Rotating(ssl.PROTOCOL_TLS_SERVER)
        rotating._store = self
        rotating._watch = type(
            "HandshakeWatch", (_HandshakeWatch,), {"on_failure": staticmethod(on_handshake_failed)}
        )
        return rotating

    def refresh(self) -> ReloadResult:
        """Rebuild the context if a file changed, or while the last try failed."""
        stamps = file_stamps(self._tls)
        if stamps == self._stamps and self.problem is None:
            return "unchanged"
        try:
            loaded = load(self._tls)
        except TlsError as exc:
            if not self._failed_once and self.problem is None:
                # A pair written one file after the other is briefly a mismatch: only
                # a failure seen at two polls in a row is one.
                self._failed_once = True
                return "unchanged"
            self.problem = str(exc)
            return self._report("error", self.problem)
        self._failed_once = False
        self._stamps = loaded.stamps
        self.problem = None
        self.context = loaded.context
        self.not_after = loaded.not_after
        return self._report("loaded", None)
