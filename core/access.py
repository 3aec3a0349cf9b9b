"""Who may do what through the operator API: scopes and the principal a request acts as.

Scopes are nested (docs/design/0009-api-tokens.md): ``admin`` ⊇ ``operate`` ⊇ ``read``. The
components' API routes name the scope each route needs; the service decides how a request
proves it holds one (a bearer token) and hands the routes a ``Principal``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Scope(StrEnum):
    """What a token may do: ``read`` (devices, profiles, alerts, status), ``operate``
    (acknowledge alerts, enable or disable devices), ``admin`` (tokens, audit log)."""

    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    def covers(self, needed: Scope) -> bool:
        """Whether a token of this scope may do what ``needed`` allows."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Scope.READ: 0, Scope.OPERATE: 1, Scope.ADMIN: 2}


class ActorKind(StrEnum):
    """Where a state change came from (the audit log's ``actor_kind``)."""

    TOKEN = "token"  # noqa: S105 - the operator API, as the token's name  # noqa: S105 - not a secret
    CLI = "cli"  # the command line, as the OS user
    SERVICE = "service"  # the service itself (a rules file reloaded on change or SIGHUP)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a state change is done as: a token's name, an OS user, or the service."""

    name: str
    kind: ActorKind
    scope: Scope | None = None


# A factory of FastAPI dependencies: ``guard(Scope.OPERATE)`` is a dependency that yields the
# request's ``Principal`` or refuses it (401/403). The service builds it; routes only use it.
Guard = Callable[[Scope], Callable[..., Any]]
