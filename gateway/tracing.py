"""OpenTelemetry traces: a server span per request, continuing the caller's W3C trace
context, and a client span for its upstream attempts, whose context the upstream receives
in ``traceparent``. Spans go to an OTLP/HTTP collector in batches, from a thread of the
SDK's: a slow or dead collector costs a request nothing but its spans, dropped from a
bounded queue and counted.

``TracedProxy`` is the Proxy the server builds when ``[tracing] otlp_endpoint`` is set;
only then is this module imported, from the ``otel`` extra. Without it the proxy neither
imports this nor tests anything per request.

No attribute carries the path's query, a session, a body, the secret or a signature.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import signing
from .config import Settings, TracingSettings
from .errors import UpstreamError
from .metrics import add, method_label
from .proxy import Exchange, Proxy
from .response import Response
from .tenants import Tenant

QUEUE_SIZE = 2048  # spans waiting for export at most; more are dropped (and counted)
TRACES_PATH = "/v1/traces"
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})

OnDropped = Callable[[str, int], None]  # (reason, how many spans)


@dataclass(slots=True)
class TracedExchange(Exchange):
    """An exchange with its server span, set as the request is first answered."""

    span: Span = field(init=False)


class TracedProxy(Proxy):
    """The proxy with a server span per request and a client span around its upstream
    attempts; what the spans record is what ``Proxy._record`` records."""

    _exchange_type: ClassVar[type[Exchange]] = TracedExchange

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        """As Proxy's; the spans go where ``settings.tracing`` says."""
        super().__init__(settings, **kwargs)
        self._tracing = Tracing(settings.tracing, self._spans_dropped)

    async def close(self) -> None:
        await super().close()
        await self._tracing.shutdown()

    def _spans_dropped(self, reason: str, count: int) -> None:
        add(self._counts.spans_dropped, reason, count)

    async def _answer(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        """``Proxy._answer`` in a server span that continues the caller's trace."""
        traced = cast(TracedExchange, exchange)  # made by _exchange_type
        traced.span = self._tracing.server_span(method_label(request.method), request.headers)
        return await super()._answer(request, exchange)

    async def _send(
        self,
        request: web.BaseRequest,
        tenant: Tenant,
        parts: signing.RequestParts,
        lines: list[bytes],
        exchange: Exchange,
    ) -> Response:
        """``Proxy._send`` in a client span, whose context goes upstream in traceparent."""
        tracing = self._tracing
        server = cast(TracedExchange, exchange).span
        if not server.is_recording():
            # Not sampled: nothing is recorded, so no client span either; the upstream
            # still gets the trace's context (sampled off), to decide alike.
            lines = tracing.upstream_lines(server, lines)
            return await super()._send(request, tenant, parts, lines, exchange)
        span = tracing.client_span(server, parts.method, parts.host)
        error = None
        try:
            lines = tracing.upstream_lines(span, lines)
            return await super()._send(request, tenant, parts, lines, exchange)
        except UpstreamError as exc:
            error = f"upstream_{exc.kind}"
            raise
        finally:
            tracing.end(span, exchange.upstream_status, error, request_id=exchange.request_id)

    def _record(
        self, request: web.BaseRequest, exchange: Exchange, status: int, duration: float
    ) -> None:
        """``Proxy._record``, then the server span ended with the same status and error."""
        super()._record(request, exchange, status, duration)
        self._tracing.end(
            cast(TracedExchange, exchange).span,
            status,
            exchange.error,
            request_id=exchange.request_id,
            tenant=exchange.tenant,
            upstream_status=exchange.upstream_status,
        )


class Tracing:
    """The tracer provider, its batch export, and the spans of one request."""

    def __init__(self, settings: TracingSettings, on_dropped: OnDropped) -> None:
        assert settings.otlp_endpoint is not None  # noqa: S101 - only built with one
        endpoint = str(settings.otlp_endpoint).rstrip("/") + TRACES_PATH
        exporter = _Counted(OTLPSpanExporter(endpoint=endpoint), on_dropped)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        self.provider.add_span_processor(
            _Bounded(BatchSpanProcessor(exporter, max_queue_size=QUEUE_SIZE), exporter, on_dropped)
        )
        self._tracer = self.provider.get_tracer("aleacc_gateway")
        self._propagator = TraceContextTextMapPropagator()

    def server_span(self, method: str, headers: Mapping[str, str]) -> Span:
        """A request's span, the child of the caller's valid ``traceparent`` if it sent one."""
        parent = self._propagator.extract(headers)
        return self._tracer.start_span(
            method, parent, SpanKind.SERVER, {"http.request.method": method}
        )

    def client_span(self, server: Span, method: str, host: str) -> Span:
        """The span of the upstream attempt(s), under ``server``."""
        return self._tracer.start_span(
            method,
            trace.set_span_in_context(server, Context()),
            SpanKind.CLIENT,
            {"http.request.method": method, "server.address": host},
        )

    def upstream_lines(self, client: Span, lines: Sequence[bytes]) -> list[bytes]:
        """``lines`` with the caller's trace context replaced by ``client``'s."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, trace.set_span_in_context(client, Context()))
        kept = [line for line in lines if line.partition(b":")[0].lower() not in _CONTEXT_HEADERS]
        return kept + [f"{name}: {value}".encode("ascii") for name, value in carrier.items()]

    @staticmethod
    def end(
        span: Span, status: int | None, error: str | None, **attributes: str | int | None
    ) -> None:
        """Finish ``span`` with an HTTP status, an error kind and the attributes set."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        for name, value in attributes.items():
            if value is not None:
                span.set_attribute(f"aleacc_gateway.{name}", value)
        if error is not None:
            span.set_attribute("error.type", error)
        if error is not None and (status is None or status >= 500):
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    async def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout), off the event loop."""
        await asyncio.to_thread(self.provider.shutdown)


class _Counted(SpanExporter):
    """The OTLP exporter, counting the spans a failed export lost."""

    def __init__(self, exporter: SpanExporter, on_dropped: OnDropped) -> None:
        self._exporter = exporter
        self._on_dropped = on_dropped
        self.on_exported: Callable[[int], None] = lambda count: None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._exporter.export(spans)
        finally:
            self.on_exported(len(spans))
        if result is not SpanExportResult.SUCCESS:
            self._on_dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class _Bounded(SpanProcessor):
    """The SDK's batch processor, its drops counted: it drops the oldest span when its
    queue is full and says so only in a log line."""

    def __init__(
        self, batch: BatchSpanProcessor, exporter: _Counted, on_dropped: OnDropped
    ) -> None:
        self._batch = batch
        self._on_dropped = on_dropped
        self._queued = 0
        self._lock = threading.Lock()
        exporter.on_exported = self._exported

    def _exported(self, count: int) -> None:
        with self._lock:
            self._queued = max(0, self._queued - count)

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        self._batch.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return  # not recorded: nothing is queued
        with self._lock:
            full = self._queued >= QUEUE_SIZE
            self._queued += not full
        if full:
            self._on_dropped("queue_full", 1)
        self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)
