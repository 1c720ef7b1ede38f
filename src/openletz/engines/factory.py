"""Which engine a worker runs, chosen plainly and said out loud."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from openletz.engines.base import Engine
from openletz.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineChoice:
    name: str
    reason: str


def choose_engine(settings: Settings) -> EngineChoice:
    """Decide without importing model code (the API process calls this too)."""
    if settings.engine == "sandbox":
        return EngineChoice("sandbox", "the sandbox engine was asked for (OPENLETZ_ENGINE=sandbox)")
    if settings.engine == "diffusers":
        return EngineChoice("diffusers", "the diffusers engine was asked for")
    if ":" in settings.engine:
        return EngineChoice(settings.engine, f"the engine {settings.engine} was asked for")
    return EngineChoice(
        "sandbox",
        "the diffusers engine is not part of this build, so images come from the "
        "weight-free sandbox engine (not a model)",
    )


def make_engine(settings: Settings) -> Engine:
    choice = choose_engine(settings)
    if choice.name == "diffusers":
        raise RuntimeError("the diffusers engine is not available in this build")
    if ":" in choice.name:
        module, _, attr = choice.name.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        engine: Engine = factory(settings)
        log.info("engine: %s (%s)", engine.name, choice.reason)
        return engine
    from openletz.engines.sandbox import SandboxEngine

    log.info("engine: %s (%s)", choice.name, choice.reason)
    return SandboxEngine(
        duration_s=settings.sandbox_duration_s,
        steps_per_quality=settings.sandbox_steps_per_quality,
    )
