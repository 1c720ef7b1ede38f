"""Loading a registry entry into a ready pipeline on its device."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers.models.modeling_utils import LegacyModelMixin

from openletz.engines.base import EngineError
from openletz.engines.diffusers.families import Family
from openletz.engines.diffusers.registry import ComponentSource, Resolved, SourceKind

log = logging.getLogger(__name__)

# Progress bars and per-load chatter go to a worker's log otherwise; openletz
# reports loading and progress itself.
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}


def _hint(resolved: Resolved, registry_path: str) -> str:
    source = resolved.source
    if source.kind is SourceKind.HUB:
        return (
            f"Download it with `openletz models pull {resolved.name}` where the model hub "
            f"is reachable, or set its `source` in {registry_path} to a local diffusers "
            "folder or a .safetensors file."
        )
    return (
        f"Check that {source.location} exists and is readable, or fix `source` in {registry_path}."
    )


def _component_hint(resolved: Resolved, component: ComponentSource, registry_path: str) -> str:
    if component.kind is SourceKind.HUB:
        return (
            f"Download it with `openletz models pull {resolved.name}` where the model hub "
            f"is reachable, or set `components.{component.name}.source` in {registry_path} "
            "to a local folder."
        )
    return (
        f"Check that {component.label} exists and is readable, or fix "
        f"`components.{component.name}` in {registry_path}."
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: CUDA's, or the CPU allocator's."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "not enough memory" in text
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).rstrip(".")


def _index_location(resolved: Resolved) -> tuple[str, str | None]:
    """Where the pipeline's ``model_index.json`` is: its source, or for a single
    file the layout named by ``config``."""
    source = resolved.source
    if source.kind is SourceKind.SINGLE_FILE:
        assert source.config is not None  # the registry requires it
        return source.config, None
    return source.location, resolved.spec.revision


def _read_index(location: str, revision: str | None) -> dict[str, Any]:
    """The ``model_index.json`` of a diffusers folder or hub id (from the cache, or
    downloaded where the hub is reachable)."""
    if Path(location).is_absolute():
        path = Path(location) / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(location, "model_index.json", revision=revision))
    index: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return index


def component_class(
    resolved: Resolved, component: ComponentSource, pipeline: type[Any]
) -> type[Any]:
    """The class that loads ``component``, as the base pipeline's ``model_index.json``
    names it (``"transformer": ["diffusers", "PixArtTransformer2DModel"]``). An
    index that names a legacy class (``Transformer2DModel``, as older PixArt
    repositories do) gets the class the ``pipeline`` declares for the component,
    which is what diffusers would turn it into."""
    location, revision = _index_location(resolved)
    index = _read_index(location, revision)
    entry = index.get(component.name)
    if not isinstance(entry, list | tuple) or len(entry) != 2 or None in entry:
        parts = sorted(k for k, v in index.items() if isinstance(v, list) and None not in v)
        raise ValueError(
            f"the pipeline at {location} has no component {component.name!r} "
            f"(it has {', '.join(parts)})"
        )
    library, class_name = entry
    module = importlib.import_module(str(library))
    cls: type[Any] = getattr(module, str(class_name))
    if issubclass(cls, LegacyModelMixin):
        try:
            declared = typing.get_type_hints(pipeline.__init__).get(component.name)
        except (NameError, TypeError):
            declared = None
        if (
            isinstance(declared, type)
            and issubclass(declared, diffusers.ModelMixin)
            and not issubclass(declared, LegacyModelMixin)
        ):
            return declared
    return cls


def _load_component(
    resolved: Resolved, component: ComponentSource, cls: type[Any], dtype: torch.dtype
) -> Any:
    kwargs: dict[str, Any] = {}
    if issubclass(cls, torch.nn.Module):
        kwargs["dtype"] = dtype
    if component.subfolder:
        kwargs["subfolder"] = component.subfolder
    if component.variant:
        kwargs["variant"] = component.variant
    location = component.location
    if component.kind is SourceKind.HUB:
        # Through the hub cache's snapshot (fetched where the hub is reachable,
        # with the files `models pull` takes), then as a local folder.
        from huggingface_hub import snapshot_download

        allow, ignore = component.download_patterns()
        location = snapshot_download(
            component.location,
            revision=component.revision,
            allow_patterns=allow,
            ignore_patterns=ignore,
        )
    try:
        return cls.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        if "variant" not in kwargs:
            raise
        log.info(
            "%s: no %s variant of its %s (%s); loading the default weights",
            resolved.name,
            component.variant,
            component.name,
            exc,
        )
        del kwargs["variant"]
        return cls.from_pretrained(location, **kwargs)


def load_pipeline(
    resolved: Resolved,
    family: Family,
    *,
    device: torch.device,
    dtype: torch.dtype,
    compile: bool = False,
    registry_path: str = "the model registry",
) -> Any:
    """The pipeline of ``resolved`` on ``device``, with the components its registry
    entry takes from other sources. A failure becomes an :class:`EngineError`
    naming the model and what to do about it, except running out of memory
    (see :func:`is_out_of_memory`), which is raised as it is: what to do about
    that depends on the other models loaded, which the engine knows."""
    cls = getattr(diffusers, family.pipeline)
    source = resolved.source
    spec = resolved.spec
    parts: dict[str, Any] = {}
    try:
        classes = {c.name: component_class(resolved, c, cls) for c in resolved.components}
    except (OSError, ValueError, AttributeError, ImportError) as exc:
        raise EngineError(
            f"The model {resolved.name!r} ({source.location}) could not be loaded: "
            f"{_reason(exc)}. " + _hint(resolved, registry_path)
        ) from exc
    for component in resolved.components:
        try:
            parts[component.name] = _load_component(
                resolved, component, classes[component.name], dtype
            )
        except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
            if is_out_of_memory(exc):
                raise
            raise EngineError(
                f"The model {resolved.name!r} could not be loaded: its {component.name} "
                f"({component.label}): {_reason(exc)}. "
                + _component_hint(resolved, component, registry_path)
            ) from exc
    try:
        if source.kind is SourceKind.SINGLE_FILE:
            pipe = cls.from_single_file(source.location, config=source.config, dtype=dtype, **parts)
        else:
            kwargs: dict[str, Any] = {"dtype": dtype, **parts}
            if spec.revision:
                kwargs["revision"] = spec.revision
            if spec.variant and source.kind is SourceKind.HUB:
                kwargs["variant"] = spec.variant
            try:
                pipe = cls.from_pretrained(source.location, **kwargs)
            except (OSError, ValueError) as exc:
                if "variant" not in kwargs:
                    raise
                # A copy without that variant's files (a local mirror, a fine-tune)
                # still loads; its full-precision weights are cast on load.
                log.info(
                    "%s: no %s variant (%s); loading the default weights",
                    resolved.name,
                    spec.variant,
                    exc,
                )
                del kwargs["variant"]
                pipe = cls.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        if is_out_of_memory(exc):
            raise  # the engine says what to do about memory
        raise EngineError(
            f"The model {resolved.name!r} ({source.location}) could not be loaded: "
            f"{_reason(exc)}. " + _hint(resolved, registry_path)
        ) from exc
    if spec.scheduler is not None:
        pipe.scheduler = _scheduler(spec.scheduler, pipe.scheduler.config, spec)
    elif spec.timestep_spacing is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, timestep_spacing=spec.timestep_spacing
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    pin_placement(pipe)
    if device.type == "cuda":
        # Convolutions run fastest on NHWC tensors with cuDNN; attention already
        # uses PyTorch's SDPA kernels, diffusers' default.
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
        if compile:
            for name in ("unet", "transformer"):
                module = getattr(pipe, name, None)
                if module is not None:
                    setattr(pipe, name, torch.compile(module, fullgraph=False))
    return pipe


def _scheduler(name: str, config: Any, spec: Any) -> Any:
    cls_name, options = _SCHEDULERS[name]
    extra = dict(options)
    if spec.timestep_spacing is not None:
        extra["timestep_spacing"] = spec.timestep_spacing
    return getattr(diffusers, cls_name).from_config(config, **extra)


def img2img_from(pipe: Any, family: Family) -> Any:
    """The family's img2img pipeline sharing ``pipe``'s components (no copy)."""
    assert family.img2img is not None
    cls = getattr(diffusers, family.img2img)
    # The models are passed by name: from_pipe takes over by itself only those of
    # exactly the classes its signature names, and pinned ones are subclasses.
    takes = inspect.signature(cls.__init__).parameters
    models = {
        name: component
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module) and name in takes
    }
    img2img = cls.from_pipe(pipe, **models)
    img2img.set_progress_bar_config(disable=True)
    pin_placement(img2img)
    return img2img


# -- placement, looked up once -----------------------------------------------------
#
# diffusers answers "which device, which dtype?" by walking every submodule of a
# model, looking for offloading and casting hooks: a pipeline's ``device`` and
# ``_execution_device`` walk every component (after an ``inspect.signature``), and
# a model's ``dtype`` walks it again at each step of its forward. That is pure Python,
# several times per call and once per step per model: on the CPU, 13 % of a small
# SD model's call (49 -> 42 ms at 64x64, one step), and on a GPU, host time between
# kernels. The engine places a pipeline once, with no offloading or casting hooks,
# and never moves it afterwards, so the answers do not change: they are looked up
# when it is loaded, and kept (and looked up again if it is moved after all).

#: the properties pinned, for a pipeline and for its models (diffusers' and
#: transformers', where they are properties)
_PIPELINE_PINS = ("device", "_execution_device", "dtype")
_MODEL_PINS = ("device", "dtype")


def _hooked(module: torch.nn.Module) -> bool:
    """Whether accelerate or diffusers hooks (offloading, layerwise casting) hang on
    ``module``: their answers depend on where the hooks are at the moment."""
    return any(
        hasattr(sub, "_hf_hook") or hasattr(sub, "_diffusers_hook") for sub in module.modules()
    )


#: (class, pinned names) -> its pinned subclass: one per class, however many models
_PINNED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _pinned_class(cls: type, names: tuple[str, ...]) -> type:
    """A subclass of ``cls`` (same name and module) whose properties ``names`` return
    the values kept on the instance, looked up again after a move: a module's
    ``_apply`` (behind ``to``, ``cuda``, ``half``...) or a pipeline's ``to``."""
    pinned = _PINNED_CLASSES.get((cls, names))
    if pinned is not None:
        return pinned

    def kept(name: str) -> property:
        attr = _PINNED_PREFIX + name
        return property(lambda self: self.__dict__[attr], doc=f"{name}, looked up at load")

    namespace: dict[str, Any] = {name: kept(name) for name in names}
    namespace.update(
        __module__=cls.__module__,
        __qualname__=cls.__qualname__,
        __doc__=cls.__doc__,
        _openletz_pinned=names,
    )
    mover = "_apply" if issubclass(cls, torch.nn.Module) else "to"

    def moved(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = getattr(super(pinned, self), mover)(*args, **kwargs)
        _look_up(self, cls, names)
        return out

    namespace[mover] = moved
    pinned = _PINNED_CLASSES[cls, names] = type(cls.__name__, (cls,), namespace)
    return pinned


_PINNED_PREFIX = "_openletz_pinned_"


def _look_up(obj: Any, cls: type, names: Sequence[str]) -> None:
    """Keep ``cls``'s own answers for ``obj``'s properties ``names``."""
    for name in names:
        obj.__dict__[_PINNED_PREFIX + name] = getattr(cls, name).fget(obj)


def _pin(obj: Any, names: Sequence[str]) -> None:
    cls = type(obj)
    if getattr(cls, "_openletz_pinned", None):
        return
    present = tuple(name for name in names if isinstance(getattr(cls, name, None), property))
    if present:
        _look_up(obj, cls, present)
        obj.__class__ = _pinned_class(cls, present)


def pin_placement(pipe: Any) -> None:
    """Look up ``pipe``'s device and dtype (and its models') once and keep them
    (see above), until the pipeline or a model is moved. Nothing is pinned where
    offloading or casting hooks are installed."""
    models = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    if any(_hooked(model) for model in models):
        return
    for model in models:
        _pin(model, _MODEL_PINS)
    _pin(pipe, _PIPELINE_PINS)


def model_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total
