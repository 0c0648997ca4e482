"""The one server interceptor: authorize every call, map its errors, emit its telemetry.

A gRPC server interceptor only sees the method name and metadata; the peer certificate
(`context.auth_context()`) and the request message are only reachable inside the handler, so the
interceptor returns a wrapped handler that does the work per call:

1. start the span; read the peer's SPIFFE ID and TLS version from the verified handshake;
2. authorize (identity, resource, claim, scope; see :mod:`zumik_secrets.server.authorization`),
   auditing every denial, every allow without a claim, and the allows of sensitive methods
   (``audit_allow``);
3. run the servicer with the verified :class:`CallContext` installed. The allow of a sensitive
   method is recorded as its own ``authz.allow`` event unless the method succeeded and its own
   event of the call, naming the caller, was accepted by the recorder (``secret.open``,
   ``secret.seal``... with the same actor, subject, target and trace): that event already is
   the record of the allowed call, and one event per call halves the audit work of the hottest
   sensitive methods. A failed call, or one whose event could not be recorded, keeps its
   ``authz.allow`` (written after the call);
4. turn a domain error into its rich status (one table, :mod:`zumik_secrets.api.status`) and any
   other exception into INTERNAL with a correlation id (the detail goes to the log only);
5. end the span and write the access-log line.

The wrapper keeps each handler's nature (see :mod:`zumik_secrets.server.limits`): a non-blocking
stream handler (``Health/Watch``) stays non-blocking and holds no worker; blocking stream
handlers (reflection, ``ExportEvents``) run in the stream pool, never in the unary pool; each
call takes a per-peer slot; under overload a unary call is shed (RESOURCE_EXHAUSTED) before it
queues. The method path is attacker input: it is bounded (:data:`MAX_METHOD_CHARS`) before any
span, log line, audit event or cache sees it, and so is the resource name of a denied call.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, cast

import grpc
from opentelemetry import trace

from zumik_secrets.api.call_context import CallContext, reset_call, set_call
from zumik_secrets.api.call_headers import claim_header, grant_header
from zumik_secrets.api.contracts import OPEN_METHODS, MethodGuard
from zumik_secrets.api.free_text import refuse_secret_fields
from zumik_secrets.api.status import internal_status, status_code_for, to_status
from zumik_secrets.app.audit import AuditEntry, AuditRecorder, record, track_call, untrack_call
from zumik_secrets.core import deadlines
from zumik_secrets.core.errors import (
    InvalidArgument,
    PermissionDenied,
    Unimplemented,
    ZumikError,
)
from zumik_secrets.core.secret_patterns import bounded
from zumik_secrets.server.authorization import Authorization, Authorizer
from zumik_secrets.server.break_glass import GrantGate
from zumik_secrets.server.limits import Limits, LimitSettings, overloaded
from zumik_secrets.server.telemetry import CallRecord, Telemetry

_LOG = logging.getLogger("zumik.server")

Behavior = Callable[[Any, grpc.ServicerContext], Any]

#: Longest method path used as itself (ours are under 80 characters); a longer one is cut before
#: any span, log line, audit event or cache key sees it (and no servicer serves it).
MAX_METHOD_CHARS = 256
#: Longest resource name kept in the audit event of a denied call (resource_scope refuses names
#: over 1024 characters; the event keeps a bounded prefix of what was sent).
MAX_AUDITED_RESOURCE_CHARS = 1024


class _Malformed(Exception):
    """Carries the refusal of an undecodable body past the denial audit (it is not a denial)."""

    def __init__(self, error: ZumikError) -> None:
        super().__init__(error.reason)
        self.error = error


class _Denied(Exception):
    """Carries an authorization refusal out of the authorize step, for auditing."""

    def __init__(self, error: ZumikError) -> None:
        super().__init__(error.reason)
        self.error = error


class _Undecodable:
    """Stands in for a request body the protobuf parser refused (see :func:`_tolerant`)."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so a malformed body reaches the handler as a marker.

    grpcio answers INTERNAL when the deserializer raises; a body that is not a valid message
    (truncated, wrong wire type, invalid UTF-8 in a string field) is bad input, so the handler
    refuses it with INVALID_ARGUMENT instead, after the identity check.
    """
    if deserializer is None:
        return None

    def parse(body: bytes) -> Any:
        try:
            return deserializer(body)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others
            return _UNDECODABLE

    return parse


_NO_DEADLINE = 1e6
"""grpcio reports a call without a deadline as a huge remaining time."""


def _remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds to the call's deadline, None when it has none."""
    left = context.time_remaining()
    if left is None or left > _NO_DEADLINE:
        return None
    return float(left)


_DEADLINE_SLACK_S = 0.5


def _ended_by_caller(context: grpc.ServicerContext) -> str | None:
    """The status of a stream the caller ended (its deadline passed, or it cancelled) while the
    handler had nothing to report: the access line and metrics say so instead of OK."""
    try:
        if context.is_active():
            return None
        # The caller's deadline fires on its side a little before ours (the timeout travels
        # as a relative value): an end within _DEADLINE_SLACK_S of our deadline is the deadline.
        return "DEADLINE_EXCEEDED" if context.time_remaining() <= _DEADLINE_SLACK_S else "CANCELLED"
    except Exception:  # noqa: BLE001 - a context without these answers: leave the code alone
        return None


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service.rsplit(".", 1)[-1], name


def _peer(context: grpc.ServicerContext) -> tuple[str, str]:
    # grpc-stubs types values as bytes; at runtime each is a list of bytes.
    auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
    ids = list(auth.get("peer_spiffe_id", ()))
    tls = list(auth.get("ssl_tls_version", ()))
    identity = ids[0].decode("utf-8", "replace") if len(ids) == 1 else ""
    return identity, tls[0].decode("ascii", "replace") if tls else ""


def _decision(
    identity: str,
    subject: str,
    method: str,
    resource: str,
    outcome: str,
    reason: str,
    trace_id: str,
    tenant_id: str | None = None,
) -> AuditEntry:
    """The audit entry of an authorization decision."""
    return AuditEntry(
        tenant_id=tenant_id if tenant_id not in (None, "-") else None,
        actor=identity,
        actor_subject=subject,
        action="authz.allow" if outcome == "success" else "authz.deny",
        target=resource,
        outcome=outcome,
        reason=reason,
        trace_id=trace_id,
        attributes={"method": method.lstrip("/")},
    )


def _releasing(responses: Iterator[Any], release: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from responses
    finally:
        release()


class GuardInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Authorization, error mapping and telemetry for every RPC."""

    def __init__(
        self,
        authorizer: Authorizer,
        telemetry: Telemetry,
        audit: AuditRecorder,
        guards: dict[str, MethodGuard],
        limits: Limits | None = None,
        grants: GrantGate | None = None,
    ) -> None:
        """Create the interceptor.

        Args:
            authorizer: Applies the identity policy and claim rules.
            telemetry: Span and access-log emitter.
            audit: Where denials and sensitive allows are recorded.
            guards: The contracts' method guards by full method name.
            limits: Pools and per-peer caps (default: the defaults of :class:`LimitSettings`;
                the server passes the one whose unary pool it runs on).
            grants: Authorizes calls presenting a break-glass grant (None: such calls refused
                like any other call the policy does not allow).
        """
        self._grants = grants
        self._authorizer = authorizer
        self._telemetry = telemetry
        self._audit = audit
        self._guards = guards
        self._limits = limits if limits is not None else Limits(LimitSettings())
        #: The wrapped handler of each served unary method (see :meth:`intercept_service`).
        self._unary_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the handler of the called method (or refuse a method no one serves).

        Runs on grpc's polling thread: only cheap decisions here.
        """
        method: str = handler_call_details.method
        if len(method) > MAX_METHOD_CHARS:
            # No servicer serves such a path: never look it up, never show it whole.
            return self._in_pool(
                grpc.unary_unary_rpc_method_handler(
                    self._unknown_method(bounded(method, MAX_METHOD_CHARS))
                ),
                self._limits.shed_pool,
            )
        if method not in OPEN_METHODS and self._limits.overloaded():
            return self._in_pool(
                grpc.unary_unary_rpc_method_handler(self._shed(method)), self._limits.shed_pool
            )
        cached = self._unary_handlers.get(method)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is None:
            return grpc.unary_unary_rpc_method_handler(self._unknown_method(method))
        guard = self._guards.get(method)
        open_method = method in OPEN_METHODS
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, guard, open_method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
            # Health checks take microseconds: they answer from the side pool, so a probe never
            # waits behind a queue of slow calls (and is never shed).
            if open_method:
                wrapped = self._in_pool(wrapped, self._limits.shed_pool)
            # Nothing in the wrapper depends on the call (the claim is read per call from the
            # call's metadata): one wrapper per served method, built on its first call. Bounded
            # by the methods the server serves (an unknown path returned above, uncached).
            self._unary_handlers[method] = wrapped
            return wrapped
        blocking_stream = handler.unary_unary is None and not getattr(
            handler.unary_stream, "experimental_non_blocking", False
        )
        if blocking_stream and self._limits.streams_full():
            return self._in_pool(self._shed_handler(handler, method), self._limits.shed_pool)
        if handler.unary_stream is not None:
            if getattr(handler.unary_stream, "experimental_non_blocking", False):
                # Health/Watch: answers through a callback and returns at once; keep it so.
                return grpc.unary_stream_rpc_method_handler(
                    self._non_blocking_stream(handler.unary_stream, method, open_method),
                    request_deserializer=_tolerant(handler.request_deserializer),
                    response_serializer=handler.response_serializer,
                )
            return self._in_pool(
                grpc.unary_stream_rpc_method_handler(
                    self._unary_stream(handler.unary_stream, method, guard, open_method),
                    request_deserializer=_tolerant(handler.request_deserializer),
                    response_serializer=handler.response_serializer,
                ),
                self._limits.stream_pool,
            )
        if handler.stream_stream is not None:
            return self._in_pool(
                grpc.stream_stream_rpc_method_handler(
                    self._streaming_in(handler.stream_stream, method, open_method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                ),
                self._limits.stream_pool,
            )
        if handler.stream_unary is None:
            return handler
        return self._in_pool(
            grpc.stream_unary_rpc_method_handler(
                self._streaming_in(handler.stream_unary, method, open_method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            ),
            self._limits.stream_pool,
        )

    @staticmethod
    def _in_pool(
        handler: grpc.RpcMethodHandler[Any, Any], pool: Any
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Make grpcio run ``handler`` in ``pool`` instead of the unary pool (grpcio reads the
        behavior's ``experimental_thread_pool`` attribute)."""
        for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, name)
            if behavior is not None:
                behavior.experimental_thread_pool = pool
        return handler

    # -- the per-call steps ------------------------------------------------------------------

    def _authorize(
        self,
        context: grpc.ServicerContext,
        record: CallRecord,
        method: str,
        guard: MethodGuard | None,
        request: Any,
        open_method: bool,
        *,
        claims: bool = True,
        peer: tuple[str, str] | None = None,
        trace_hex: str | None = None,
    ) -> tuple[CallContext, AuditEntry | None]:
        """Authorize the call.

        The claim and grant headers are checked first, on every method (open ones and those
        that take no claim included): a call with several ``zumik-claim`` headers, an empty one
        or a ``zumik-claim-bin`` one is refused (UNAUTHENTICATED ``CLAIM_MALFORMED``), the same
        shapes of ``zumik-grant`` PERMISSION_DENIED ``GRANT_MALFORMED`` (both audited as a
        denial), before anything else is decided, so no method reads a claim or grant the
        server and a proxy in front of it would read differently.

        Args:
            claims: Whether the method takes a tenant claim or a grant (False: a well-formed
                claim or grant is ignored, as for reflection, health and unknown methods, which
                name no tenant resource: the call is decided by the identity policy alone, as
                without the header; grpcurl's ``-H`` sends its headers on its reflection calls
                too).
            peer: The peer's identity and TLS version, when the caller already read them.
            trace_hex: The call's trace id, when the caller already has it (default: the
                current span's).

        Returns:
            The call's context, and the ``authz.allow`` entry to record after the call unless
            the method records an event of its own (None: nothing deferred).
        """
        identity, record.tls_version = _peer(context) if peer is None else peer
        record.peer = identity
        if trace_hex is None:
            trace_id = trace.get_current_span().get_span_context().trace_id
            trace_hex = f"{trace_id:032x}" if trace_id else ""
        metadata = context.invocation_metadata()
        try:
            raw_claim = claim_header(metadata)
            raw_grant = grant_header(metadata)
        except ZumikError as error:
            self._record_decision(
                _decision(identity, "", method, "", "denied", error.reason, trace_hex)
            )
            raise _Denied(error) from None
        if open_method:
            return CallContext(method, identity, None, None, None, False, trace_hex), None
        if not claims:
            raw_claim = raw_grant = None
        if self._grants is None:
            raw_grant = None
        resource = ""
        try:
            if raw_grant is not None and self._grants is not None:
                # Break-glass: the grant, not the policy or a claim, authorizes this call; the
                # gate records the call durably (with the grant id) before it runs.
                if request is _UNDECODABLE:
                    raise _Malformed(
                        InvalidArgument(
                            "the request body is not a valid message of this method's request type",
                            reason="MALFORMED_REQUEST",
                        )
                    )
                if guard is not None and guard.tenant_scoped and request is not None:
                    resource = getattr(request, guard.resource_field)
                granted = self._grants.authorize(
                    identity, method, guard, resource, raw_grant, raw_claim is not None, trace_hex
                )
                record.tenant_id = granted.tenant_id or ""
                record.project_id = granted.project_id or ""
                return CallContext(
                    method,
                    identity,
                    None,
                    granted.tenant_id,
                    granted.project_id,
                    True,
                    trace_hex,
                    resource=granted.resource,
                    authority=granted.authority,
                ), None
            decision = self._authorizer.check_identity(identity or None, method)
            if request is _UNDECODABLE:
                raise _Malformed(
                    InvalidArgument(
                        "the request body is not a valid message of this method's request type",
                        reason="MALFORMED_REQUEST",
                    )
                )
            if guard is not None and guard.tenant_scoped and request is not None:
                resource = getattr(request, guard.resource_field)
            authz: Authorization = self._authorizer.authorize(guard, decision, resource, raw_claim)
        except ZumikError as error:
            self._record_decision(
                _decision(
                    identity,
                    "",
                    method,
                    bounded(
                        resource if isinstance(resource, str) else "", MAX_AUDITED_RESOURCE_CHARS
                    ),
                    "denied",
                    error.reason,
                    trace_hex,
                )
            )
            raise _Denied(error) from None
        record.tenant_id = authz.tenant_id or ""
        record.project_id = authz.project_id or ""
        call = CallContext(
            method=method,
            identity=identity,
            claim=authz.claim,
            tenant_id=authz.tenant_id,
            project_id=authz.project_id,
            without_claim=authz.without_claim,
            trace_id=trace_hex,
            resource=authz.resource,
            authority=authz.authority,
            project_view=authz.project_view,
        )
        if not (authz.without_claim or (guard is not None and guard.audit_allow)):
            return call, None
        allow = _decision(
            identity,
            call.subject,
            method,
            resource,
            "success",
            "ALLOWED_WITHOUT_CLAIM" if authz.without_claim else "ALLOWED",
            trace_hex,
            tenant_id=authz.tenant_id,
        )
        if authz.without_claim:
            # Acting without a claim is a privilege: always its own event, before the call.
            self._record_decision(allow)
            return call, None
        return call, allow

    def _refuse_secrets(self, request: Any, allow: AuditEntry | None) -> None:
        """Refuse a secret in a field not meant for one (the allowed call is still audited)."""
        try:
            refuse_secret_fields(request)
        except ZumikError:
            if allow is not None:
                self._record_decision(allow)
            raise

    def _record_decision(self, entry: AuditEntry) -> None:
        if not record(self._audit, entry, durable=False):
            _LOG.warning(
                "audit of an authorization decision failed",
                extra={"method": entry.attributes.get("method", "")},
            )

    def _run(
        self,
        behavior: Behavior,
        request: Any,
        context: grpc.ServicerContext,
        call: CallContext,
        allow: AuditEntry | None,
    ) -> Any:
        """Run a unary-response behavior with ``call`` installed (and the allow tracked).

        A PERMISSION_DENIED raised by the use case (a grant above the caller's authority, see
        :mod:`zumik_secrets.core.authority`) is an authorization refusal: it is audited as
        ``authz.deny`` in place of the allow.
        """
        token = set_call(call)  # the deadline is the one the wrapper installed
        try:
            if allow is None:
                try:
                    return behavior(request, context)
                except PermissionDenied as error:
                    self._record_denial(call, error)
                    raise
            tracked, audit_token = track_call(call.identity)
            succeeded = denied = False
            try:
                result = behavior(request, context)
                succeeded = True
                return result
            except PermissionDenied as error:
                denied = True
                self._record_denial(call, error)
                raise
            finally:
                try:
                    if not (denied or (succeeded and tracked.recorded)):
                        self._record_decision(allow)
                finally:
                    untrack_call(audit_token)
        finally:
            reset_call(token)

    def _record_denial(self, call: CallContext, error: PermissionDenied) -> None:
        self._record_decision(
            _decision(
                call.identity,
                call.subject,
                call.method,
                str(call.resource or ""),
                "denied",
                error.reason,
                call.trace_id,
                tenant_id=call.tenant_id,
            )
        )

    def _fail(
        self, context: grpc.ServicerContext, record: CallRecord, error: Exception
    ) -> NoReturn:
        """Record the outcome and abort the call with its rich status (raises)."""
        if isinstance(error, _Denied | _Malformed):
            record.denied = isinstance(error, _Denied)
            error = error.error
        if isinstance(error, ZumikError):
            record.code = status_code_for(error).name
            record.reason = error.reason
            context.abort_with_status(to_status(error))
        correlation_id = secrets.token_hex(8)
        record.code = "INTERNAL"
        record.reason = "INTERNAL"
        _LOG.error(
            "unhandled error",
            exc_info=error,
            extra={"correlation_id": correlation_id, "method": record.method},
        )
        context.abort_with_status(internal_status(correlation_id))

    def _unary(
        self,
        behavior: Behavior,
        method: str,
        guard: MethodGuard | None,
        open_method: bool,
    ) -> Behavior:
        """The wrapper of a unary method, shared by all its calls (only the metadata, hence
        the claim, varies per call: it is read from the call's context)."""
        service, name = _split(method)

        def serve(
            request: Any,
            context: grpc.ServicerContext,
            record: CallRecord,
            left: float | None,
            trace_hex: str,
        ) -> Any:
            try:
                peer = _peer(context)
                release = self._limits.admit(peer[0], left)
                try:
                    call, allow = self._authorize(
                        context,
                        record,
                        method,
                        guard,
                        request,
                        open_method,
                        peer=peer,
                        trace_hex=trace_hex,
                    )
                    record.request = request
                    if guard is not None:
                        self._refuse_secrets(request, allow)
                    return self._run(behavior, request, context, call, allow)
                finally:
                    release()
            except Exception as error:  # noqa: BLE001 - mapped to a status below
                self._fail(context, record, error)

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            record = CallRecord(service, name)
            span = self._telemetry.start_span(service, name, context)
            # Every wait of the call (pool checkout, statements, durable audit, outbound calls)
            # ends before the caller's deadline, so it gets UNAVAILABLE instead of
            # DEADLINE_EXCEEDED. The one deadline of the call, installed once.
            left = _remaining(context)
            deadline_token = deadlines.enter(left)
            try:
                trace_id = span.get_span_context().trace_id
                if not trace_id:
                    # Tracing off (no SDK provider): no trace to make current; the context
                    # switch of use_span was a visible part of every call's fixed cost. A span
                    # the SDK sampled out still has a trace id, and stays current for the audit.
                    return serve(request, context, record, left, "")
                with trace.use_span(span, end_on_exit=False):
                    return serve(request, context, record, left, f"{trace_id:032x}")
            finally:
                deadlines.leave(deadline_token)
                self._telemetry.finish(span, record, time.perf_counter() - started)

        return handle

    def _unary_stream(
        self,
        behavior: Behavior,
        method: str,
        guard: MethodGuard | None,
        open_method: bool,
    ) -> Behavior:
        service, name = _split(method)

        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            record = CallRecord(service, name)
            span = self._telemetry.start_span(service, name, context)
            try:
                with trace.use_span(span, end_on_exit=False):
                    release = None
                    try:
                        release = self._limits.stream(_peer(context)[0])
                        call, allow = self._authorize(
                            context, record, method, guard, request, open_method
                        )
                        record.request = request
                        if guard is not None:
                            self._refuse_secrets(request, allow)
                        token = set_call(call)
                        tracked, audit_token = track_call(call.identity)
                        succeeded = False
                        try:
                            yield from behavior(request, context)
                            succeeded = True
                        finally:
                            try:
                                if allow is not None and not (succeeded and tracked.recorded):
                                    self._record_decision(allow)
                            finally:
                                untrack_call(audit_token)
                                reset_call(token)
                    except Exception as error:  # noqa: BLE001 - mapped to a status below
                        self._fail(context, record, error)
                    finally:
                        if release is not None:
                            release()
            finally:
                if record.code == "OK":
                    record.code = _ended_by_caller(context) or "OK"
                self._telemetry.finish(span, record, time.perf_counter() - started)

        return handle

    def _non_blocking_stream(self, behavior: Any, method: str, open_method: bool) -> Any:
        """A non-blocking server-streaming handler (``Health/Watch``) kept non-blocking.

        grpcio calls such a handler with a ``send_response_callback`` and releases the worker as
        soon as it returns; the stream lives on without a thread. The per-peer stream slot is
        released when the RPC terminates.
        """
        service, name = _split(method)

        def handle(
            request: Any, context: grpc.ServicerContext, send_response_callback: Any
        ) -> None:
            started = time.perf_counter()
            record = CallRecord(service, name)
            span = self._telemetry.start_span(service, name)
            try:
                try:
                    release = self._limits.stream(_peer(context)[0])
                    try:
                        self._authorize(
                            context, record, method, None, None, open_method, claims=False
                        )
                        if request is _UNDECODABLE:
                            raise _Malformed(
                                InvalidArgument(
                                    "the request body is not a valid message of this method's "
                                    "request type",
                                    reason="MALFORMED_REQUEST",
                                )
                            )
                        if not context.add_callback(release):
                            release()
                    except BaseException:
                        release()
                        raise
                except Exception as error:  # noqa: BLE001 - mapped to a status below
                    self._fail(context, record, error)
                behavior(request, context, send_response_callback)
            finally:
                self._telemetry.finish(span, record, time.perf_counter() - started)

        handle.experimental_non_blocking = True  # type: ignore[attr-defined]
        return handle

    def _shed_handler(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A refusing handler of the same arity as ``handler`` (a unary handler on a
        client-streaming call would wait for a request message that may never come)."""
        shed = self._shed(method)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(shed)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(shed)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(shed)
        return grpc.unary_unary_rpc_method_handler(shed)

    def _shed(self, method: str) -> Behavior:
        """The answer of a unary call shed under overload (runs in the shed pool)."""
        service, name = _split(method)

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            record = CallRecord(service, name)
            record.code = "RESOURCE_EXHAUSTED"
            record.reason = "SERVER_OVERLOADED"
            context.abort_with_status(to_status(overloaded()))

        return handle

    def _streaming_in(self, behavior: Behavior, method: str, open_method: bool) -> Behavior:
        """Client-streaming methods (reflection): identity check only, no tenant resources."""
        service, name = _split(method)

        def handle(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            record = CallRecord(service, name)
            span = self._telemetry.start_span(service, name, context)
            try:
                try:
                    release = self._limits.stream(_peer(context)[0])
                    try:
                        self._authorize(
                            context, record, method, None, None, open_method, claims=False
                        )
                    except BaseException:
                        release()
                        raise
                except Exception as error:  # noqa: BLE001 - mapped to a status below
                    self._fail(context, record, error)
                context.add_callback(release)
                responses = behavior(request_iterator, context)
                if not isinstance(responses, Iterator):
                    release()
                    return responses
                return _releasing(responses, release)
            finally:
                self._telemetry.finish(span, record, time.perf_counter() - started)

        return handle

    def _unknown_method(self, method: str) -> Behavior:
        """A method no servicer serves: refuse unknown identities, else UNIMPLEMENTED."""
        service, name = _split(method)

        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            record = CallRecord(service, name)
            span = self._telemetry.start_span(service, name, context)
            try:
                try:
                    self._authorize(context, record, method, None, None, False, claims=False)
                    raise Unimplemented(f"no such method: {method}", reason="METHOD_NOT_FOUND")
                except Exception as error:  # noqa: BLE001 - mapped to a status below
                    self._fail(context, record, error)
            finally:
                self._telemetry.finish(span, record, time.perf_counter() - started)

        return handle
