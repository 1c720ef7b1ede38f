"""Loading a registry entry into a ready pipeline on its device."""

from __future__ import annotations

import logging
from typing import Any

import diffusers
import torch
import transformers

from openletz.engines.base import EngineError
from openletz.engines.diffusers.families import Family
from openletz.engines.diffusers.registry import Resolved, SourceKind

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


def load_pipeline(
    resolved: Resolved,
    family: Family,
    *,
    device: torch.device,
    dtype: torch.dtype,
    compile: bool = False,
    registry_path: str = "the model registry",
) -> Any:
    """The pipeline of ``resolved`` on ``device``; any failure becomes an
    :class:`EngineError` naming the model and what to do about it."""
    cls = getattr(diffusers, family.pipeline)
    source = resolved.source
    spec = resolved.spec
    try:
        if source.kind is SourceKind.SINGLE_FILE:
            pipe = cls.from_single_file(source.location, config=source.config, dtype=dtype)
        else:
            kwargs: dict[str, Any] = {"dtype": dtype}
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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            f"The model {resolved.name!r} ({source.location}) could not be loaded: "
            f"{reason.rstrip('.')}. " + _hint(resolved, registry_path)
        ) from exc
    if spec.scheduler is not None:
        pipe.scheduler = _scheduler(spec.scheduler, pipe.scheduler.config, spec)
    elif spec.timestep_spacing is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, timestep_spacing=spec.timestep_spacing
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
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
    img2img = getattr(diffusers, family.img2img).from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    return img2img


def model_bytes(pipe: Any) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total
