"""Run one check: connect, deadline, timing, error classification.

This is the envelope every probe runs in.  It owns the socket and the deadline; a
probe only speaks.  Every exception is mapped to a status here (via `exprobe.status`),
and an exception nobody expected becomes `internal-error` for this check only.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from exprobe.errors import ProbeError
from exprobe.net.connect import connect_only, open_stream
from exprobe.net.stream import Stream
from exprobe.net.tls import TlsOptions
from exprobe.probes import get as get_probe
from exprobe.probes.base import CheckSpec, ProbeContext
from exprobe.result import CheckResult, now_iso
from exprobe.status import (
    Classified,
    PortState,
    Status,
    classify_connect_error,
    classify_io_error,
)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Knobs that apply to every check of a run."""

    connect_timeout: float = 3.0
    timeout: float = 10.0  # whole-check deadline, connect included
    retries: int = 0  # extra connect attempts after a connect timeout
    source: str | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    verbose: bool = False
    port_offset: int = 0
    dns_server: str | None = None  # --dns-server, for probes that look names up themselves


@dataclass(slots=True)
class Outcome:
    """A finished check plus the follow-up checks it asked for."""

    result: CheckResult
    derived: list[CheckSpec]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


async def run_check(check: CheckSpec, opts: RunOptions) -> Outcome:
    """Run `check` to completion within `opts.timeout`; never raises except CancelledError."""
    if check.address is not None and get_probe(check.probe).func is None:
        return await _connect_check(check, check.address, opts)
    started_at = now_iso()
    t0 = time.perf_counter()
    ctx = ProbeContext(
        check=check, tls_options=opts.tls, verbose=opts.verbose, port_offset=opts.port_offset,
        dns_server=opts.dns_server,
    )  # fmt: skip
    connect_ms: float | None = None
    stream: Stream | None = None
    classified: Classified | None = None
    message = ""

    spec = get_probe(check.probe)
    if not spec.connects and spec.func is not None:
        return await _lookup_check(check, ctx, spec.func, opts, t0, started_at)
    if check.address is None:
        return Outcome(
            _result(
                check,
                ctx,
                Status.DNS_ERROR,
                PortState.UNKNOWN,
                "resolve",
                t0,
                None,
                started_at,
                "name did not resolve",
            ),
            [],
        )
    phase = "connect"
    try:
        async with asyncio.timeout(opts.timeout):
            ctx.step("connect")
            attempts = 0
            while True:
                attempts += 1
                try:
                    stream = await open_stream(
                        check.address,
                        check.port,
                        source=opts.source,
                        connect_timeout=opts.connect_timeout,
                    )
                    break
                except TimeoutError:
                    if attempts > opts.retries:
                        raise
            connect_ms = _ms(t0)
            if attempts > 1:
                ctx.facts["connect_attempts"] = attempts
            phase = "io"
            if stream is not None and spec.func is not None:
                if check.params.tls == "implicit":
                    await ctx.start_tls(stream)
                await spec.func(stream, check.params, ctx)
    except ProbeError as exc:
        classified = Classified(exc.status, PortState.OPEN, exc.message)
        ctx.facts.update(exc.facts)
    except asyncio.CancelledError:
        if stream is not None:
            stream.abort()
        raise
    except Exception as exc:
        if isinstance(exc, OSError | EOFError | TimeoutError | ConnectionError):
            classified = (
                classify_connect_error(exc) if phase == "connect" else classify_io_error(exc)
            )
            if classified.errno_name:
                ctx.facts["errno"] = classified.errno_name
            if classified.icmp is not None:
                ctx.facts["icmp"] = classified.icmp
            if phase == "io" and classified.status is Status.CONNECTION_CLOSED:
                ctx.facts.setdefault(
                    "closed_note",
                    "closed by the server or by an inspection device in the path",
                )
        else:
            classified = Classified(
                Status.INTERNAL_ERROR,
                PortState.OPEN if phase == "io" else PortState.UNKNOWN,
                f"bug in exprobe: {type(exc).__name__}: {exc}",
            )
            if opts.verbose:
                ctx.facts["traceback"] = traceback.format_exc(limit=20)
    finally:
        if stream is not None:
            if classified is None:
                await _close_quietly(stream)
            else:
                stream.abort()  # a failed check must not outlive its deadline saying goodbye
                # The stdlib loop closes an aborted socket on its next pass: let it, so the
                # per-host slot frees only once the connection is really gone.
                await asyncio.sleep(0)

    if classified is None:
        status, state = Status.SUCCESS, PortState.OPEN
        failed_step = None
        message = ctx.summary or "connected"
        ctx.finish_steps()
    else:
        status, state = classified.status, classified.port_state
        failed_step = ctx.current_step
        message = classified.reason
        ctx.finish_steps(outcome=status.value)
    result = _result(
        check, ctx, status, state, failed_step, t0, connect_ms, started_at, message, stream
    )
    return Outcome(result, ctx.derived if status is Status.SUCCESS or ctx.derived else [])


async def _lookup_check(
    check: CheckSpec, ctx: ProbeContext, func: Any, opts: RunOptions, t0: float, started_at: str
) -> Outcome:
    """A probe that opens no connection: its function, with no stream, within the
    check's deadline; what it derives is run like any other check."""
    classified: Classified | None = None
    try:
        async with asyncio.timeout(opts.timeout):
            await func(None, check.params, ctx)
    except ProbeError as exc:
        classified = Classified(exc.status, PortState.UNKNOWN, exc.message)
        ctx.facts.update(exc.facts)
    except TimeoutError:
        classified = Classified(Status.IO_TIMEOUT, PortState.UNKNOWN, "deadline passed")
    except Exception as exc:
        classified = Classified(
            Status.INTERNAL_ERROR, PortState.UNKNOWN, f"bug in exprobe: {type(exc).__name__}: {exc}"
        )
    if classified is None:
        ctx.finish_steps()
        status, state, failed, message = Status.SUCCESS, PortState.UNKNOWN, None, ctx.summary or ""
    else:
        ctx.finish_steps(outcome=classified.status.value)
        status, state = classified.status, classified.port_state
        failed, message = ctx.current_step, classified.reason
    result = _result(check, ctx, status, state, failed, t0, None, started_at, message)
    return Outcome(result, ctx.derived)


async def _connect_check(check: CheckSpec, address: str, opts: RunOptions) -> Outcome:
    """The lean path of a probe without a function (`tcp`): connect, reset, report.

    Same result as the generic path would give, without a context, a stream or a
    cancel-scope: one timer per attempt, inside `connect_only`, whose budget is what is
    left of the check's deadline.
    """
    started_at = now_iso()
    t0 = time.perf_counter()
    deadline = t0 + opts.timeout
    attempts = 0
    classified: Classified | None = None
    trace: str | None = None
    try:
        while True:
            attempts += 1
            remaining = deadline - time.perf_counter()
            budget = min(opts.connect_timeout, remaining)
            try:
                if budget <= 0:
                    raise TimeoutError
                await connect_only(address, check.port, source=opts.source, connect_timeout=budget)
                break
            except TimeoutError:
                # Retry only a connect timeout, and never past the whole-check deadline.
                if attempts > opts.retries or remaining <= opts.connect_timeout:
                    raise
    except (OSError, EOFError) as exc:  # TimeoutError and ConnectionError are OSErrors
        classified = classify_connect_error(exc)
    except Exception as exc:
        classified = Classified(
            Status.INTERNAL_ERROR,
            PortState.UNKNOWN,
            f"bug in exprobe: {type(exc).__name__}: {exc}",
        )
        if opts.verbose:
            trace = traceback.format_exc(limit=20)
    elapsed = _ms(t0)
    facts: dict[str, Any] = dict(check.meta)
    if classified is None:
        if attempts > 1:
            facts["connect_attempts"] = attempts
        status, state, failed_step, message = Status.SUCCESS, PortState.OPEN, None, "connected"
        connect_ms: float | None = elapsed
        outcome = "ok"
    else:
        if classified.errno_name:
            facts["errno"] = classified.errno_name
        if classified.icmp is not None:
            facts["icmp"] = classified.icmp
        if trace is not None:
            facts["traceback"] = trace
        status, state, failed_step = classified.status, classified.port_state, "connect"
        message, connect_ms, outcome = classified.reason, None, classified.status.value
    steps = ({"step": "connect", "elapsed_ms": elapsed, "outcome": outcome},)
    result = _check_result(
        check, status, state, failed_step, elapsed, connect_ms, started_at, message, facts, steps
    )
    return Outcome(result, [])


async def _close_quietly(stream: Stream) -> None:
    try:
        await stream.close()
    except Exception:
        stream.abort()


def _result(
    check: CheckSpec,
    ctx: ProbeContext,
    status: Status,
    state: PortState,
    failed_step: str | None,
    t0: float,
    connect_ms: float | None,
    started_at: str,
    message: str,
    stream: Stream | None = None,
) -> CheckResult:
    steps = tuple(
        {"step": s.name, "elapsed_ms": s.elapsed_ms, "outcome": s.outcome} for s in ctx.steps
    )
    # A derived check's meta (e.g. the EPM component) is part of its facts even when the
    # check has no probe function (the lean `tcp` path) or never got past connect.
    facts = {**dict(check.meta), **ctx.facts}
    return _check_result(
        check,
        status,
        state,
        failed_step,
        _ms(t0),
        connect_ms,
        started_at,
        message,
        facts,
        steps,
        warnings=tuple(ctx.warnings),
        transcript=tuple(stream.transcript.as_list()) if stream is not None else (),
    )


def _check_result(
    check: CheckSpec,
    status: Status,
    state: PortState,
    failed_step: str | None,
    elapsed_ms: float,
    connect_ms: float | None,
    started_at: str,
    message: str,
    facts: dict[str, Any],
    steps: tuple[dict[str, Any], ...],
    *,
    warnings: tuple[str, ...] = (),
    transcript: tuple[str, ...] = (),
) -> CheckResult:
    """The result of `check`, its identity (id, target, address, port, TLS mode, parent,
    labels) taken from the check itself, on either path."""
    return CheckResult(
        id=check.id,
        probe=check.probe,
        target=check.target,
        address=check.address,
        port=check.port,
        status=status,
        port_state=state,
        failed_step=failed_step,
        elapsed_ms=elapsed_ms,
        connect_ms=connect_ms,
        started_at=started_at,
        message=message,
        tls=check.params.tls,
        facts=facts,
        warnings=warnings,
        steps=steps,
        transcript=transcript,
        parent=check.parent,
        labels=dict(check.labels),
    )
