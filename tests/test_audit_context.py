"""The audit's check for bound structlog context variables (``_nothing_bound``, which reads
only the variables structlog made) answers what ``not get_contextvars()`` answers."""

from __future__ import annotations

import asyncio

import structlog
from apcv_verify.observe import logs
from structlog.contextvars import (
    bind_contextvars,
    bound_contextvars,
    clear_contextvars,
    get_contextvars,
    unbind_contextvars,
)


def test_nothing_bound_follows_bind_unbind_clear_and_reset() -> None:
    clear_contextvars()
    seen = []

    def check() -> None:
        seen.append((logs._nothing_bound(), not get_contextvars()))

    check()
    bind_contextvars(audit_check_a=1)
    check()
    unbind_contextvars("audit_check_a")
    check()
    with bound_contextvars(audit_check_b="x"):
        check()
    check()
    bind_contextvars(audit_check_a=None)  # a bound None is bound
    check()
    clear_contextvars()
    check()
    assert [mine for mine, _ in seen] == [True, False, True, False, True, False, True]
    assert all(mine == theirs for mine, theirs in seen)


def test_a_variable_bound_in_another_task_is_not_seen() -> None:
    clear_contextvars()

    async def bound_elsewhere() -> bool:
        async def binds() -> None:
            structlog.contextvars.bind_contextvars(audit_check_c=2)

        await asyncio.create_task(binds())
        return logs._nothing_bound()

    assert asyncio.run(bound_elsewhere())
