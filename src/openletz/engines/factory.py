"""Which engine a worker runs, chosen plainly and said out loud."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

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
    if ":" in settings.engine:
        return EngineChoice(settings.engine, f"the engine {settings.engine} was asked for")
    from openletz.engines.diffusers.availability import installed, local_models
    from openletz.engines.diffusers.registry import Registry

    if settings.engine == "diffusers":
        return EngineChoice("diffusers", "the diffusers engine was asked for")
    missing = installed()
    if missing is not None:
        return EngineChoice(
            "sandbox",
            f"the diffusers engine cannot run: {missing}; images come from the weight-free "
            "sandbox engine (not a model)",
        )
    registry = Registry.load(settings.models_file or None)
    available = local_models(registry)
    if not available:
        return EngineChoice(
            "sandbox",
            f"none of the models of {registry.path} is on this machine (run `openletz models "
            "pull`, or point the registry at local files); images come from the weight-free "
            "sandbox engine (not a model)",
        )
    return EngineChoice("diffusers", f"diffusers, with local models: {', '.join(available)}")


def make_engine(settings: Settings, on_model_state: Any = None) -> Engine:
    choice = choose_engine(settings)
    if ":" in choice.name:
        module, _, attr = choice.name.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        custom: Engine = factory(settings)
        log.info("engine: %s (%s)", custom.name, choice.reason)
        return custom
    log.info("engine: %s (%s)", choice.name, choice.reason)
    if choice.name == "diffusers" and settings.engine_process:
        from openletz.engines.process import EngineProcess

        _torch_for_imaging()
        return EngineProcess(
            settings.model_copy(update={"engine": "diffusers"}),
            name="diffusers",
            on_model_state=on_model_state,
        )
    if choice.name == "diffusers":
        from openletz.engines.diffusers.engine import DiffusersEngine
        from openletz.engines.diffusers.registry import Registry

        return DiffusersEngine(
            Registry.load(settings.models_file or None),
            device=settings.device,
            memory_budget_gb=settings.model_memory_gb,
            compile=settings.compile,
            on_model_state=on_model_state,
            preload=[n.strip() for n in settings.preload_models.split(",") if n.strip()],
            cpu_threads=settings.cpu_threads or cpu_share(settings),
            workers=workers_here(settings),
        )
    from openletz.engines.sandbox import SandboxEngine

    return SandboxEngine(
        duration_s=settings.sandbox_duration_s,
        steps_per_quality=settings.sandbox_steps_per_quality,
    )


def _torch_for_imaging() -> None:
    """Load torch in this (the worker's) process, whose model runs in another, so
    that ``imaging.resize`` uses torch's vectorised kernel for the delivery: one
    thread, since the cores are the engine's."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def workers_here(settings: Settings) -> int:
    """The worker processes on this machine: ``serve``'s own, or one ``openletz
    worker`` process in a cluster."""
    return settings.workers if settings.dispatcher == "embedded" else 1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the system has
    one), at least 1."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def cpu_share(settings: Settings) -> int:
    """The cores less one, which the API process and the rest of the worker need
    (intra-op threads that compete with them for cores only slow everything
    down), shared among the workers of this machine."""
    return max(1, (usable_cores() - 1) // workers_here(settings))
