"""API keys: ``Authorization: Bearer <key>`` when keys are configured; each key is an owner and sees
only its own models and jobs. With no keys configured everything belongs to ``anonymous``."""

from __future__ import annotations

import hmac
import logging

from fastapi import Request

from worker.errors import UnauthorizedError

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


class ApiKeys:
    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(k.encode(), owner) for k, owner in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, authorization: str | None) -> str:
        """The owner a request acts for; raises UnauthorizedError (401)."""
        if not self._keys:
            return ANONYMOUS
        if not authorization:
            raise UnauthorizedError("this service needs an API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("use 'Authorization: Bearer <key>'")
        given = token.strip().encode()
        found = None
        for key, owner in self._keys:  # compare with every key: no timing hint of which matched
            if hmac.compare_digest(key, given):
                found = owner
        if found is None:
            raise UnauthorizedError("unknown API key")
        return found


async def owner_of(request: Request) -> str:
    """FastAPI dependency: the owner of this request (async: no thread hop for a dict lookup)."""
    keys: ApiKeys = request.app.state.services.keys
    return keys.owner(request.headers.get("authorization"))
