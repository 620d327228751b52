"""Which scopes a token gets: the requested ones, narrowed to what the caller may hold (pure)."""

from __future__ import annotations

from collections.abc import Iterable

from trust.scopes import parse_scopes

__all__ = ["grant_scopes", "covered", "ScopeRefused"]


class ScopeRefused(ValueError):
    """A requested scope exceeds what the account or client may hold."""


def covered(requested: str, allowed: Iterable[str]) -> bool:
    """Is ``requested`` one of ``allowed``, or a narrower resource scope of one (same context, a
    specific type under ``*``, fewer permission letters; v1 ``read``/``write`` are their v2
    letters)?"""
    allowed = list(allowed)
    if requested in allowed:
        return True
    parsed = parse_scopes([requested])
    if not parsed:
        return False
    want = parsed[0]
    for have in parse_scopes(list(allowed)):
        if (
            have.context == want.context
            and have.resource_type in ("*", want.resource_type)
            and want.permissions <= have.permissions
        ):
            return True
    return False


def grant_scopes(
    allowed: Iterable[str], requested: str | None, *, strict: bool = False
) -> list[str]:
    """Scopes to put in the token.

    No request → everything allowed. Otherwise each requested scope that ``allowed`` covers
    (the same scope, or a narrower one: a specific type under ``*``, fewer permission letters).
    Uncovered scopes are dropped, or refused when ``strict`` (backend clients must ask only for
    what they were registered with). Nothing left → ScopeRefused.
    """
    allowed = list(allowed)
    if not requested or not requested.split():
        return allowed
    granted: list[str] = []
    for item in requested.split():
        if covered(item, allowed):
            if item not in granted:
                granted.append(item)
        elif strict:
            raise ScopeRefused(f"scope {item!r} is not registered for this client")
    if not granted:
        raise ScopeRefused("none of the requested scopes may be granted")
    return granted
