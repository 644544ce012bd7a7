"""Dependencies, as Annotated aliases: the engine and the settings live on app.state.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread
pool, a hop per dependency per request that cost more than the whole computation of a
small request (bench/http.py).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.limits import InFlightLimit
from service.engine.engine import Engine
from service.errors import NotReady, Unauthorized
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <SCE_API_KEY>`")


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the model sessions are not loaded yet (or are shutting down)")
    return engine


@dataclass(frozen=True)
class Runtime:
    """What an inference route needs, resolved as one dependency (each one costs)."""

    settings: Settings
    engine: Engine
    in_flight: InFlightLimit


async def get_runtime(request: Request) -> Runtime:
    state = request.app.state
    return Runtime(state.settings, await get_engine(request), state.in_flight)


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With SCE_API_KEY set, the request needs `Authorization: Bearer <key>`."""
    if settings.api_key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("this API needs an `Authorization: Bearer <key>` header")
    expected = settings.api_key.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):  # constant time
        raise Unauthorized("the API key is wrong")
