"""Dependencies, as Annotated aliases: the engine and the settings live on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.engine.engine import Engine
from service.errors import NotReady
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the model sessions are not loaded yet (or are shutting down)")
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
