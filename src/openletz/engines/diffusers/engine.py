"""The diffusers engine: real models, loaded once per worker and kept warm.

A request becomes a pipeline call through the registry (model, steps for the
quality, guidance for the creativity) and a size plan (the model's native area
at the requested aspect ratio, then a resize to the exact size, and at high
quality a second img2img pass at full size). Compatible requests run as one
batched call with a generator per request, so that each image is the one its
seed would give alone.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from openletz import imaging
from openletz.engines.base import (
    Engine,
    EngineError,
    GenerationRequest,
    Interrupted,
    StepCallback,
    StepUpdate,
    only_image,
)
from openletz.engines.diffusers.availability import ModelState, disk_state
from openletz.engines.diffusers.families import FAMILIES, Call, Conditioning, Family
from openletz.engines.diffusers.footprint import estimate_bytes
from openletz.engines.diffusers.loading import is_out_of_memory, load_pipeline, model_bytes
from openletz.engines.diffusers.registry import Registry, RegistryError, Resolved

log = logging.getLogger(__name__)

ModelStateCallback = Callable[[str, str, str | None], None]

#: How long a model that failed to load fails jobs at once with the same
#: message before the next job tries loading it again (the operator may have
#: fixed it in the meantime).
BROKEN_RETRY_S = 60.0


def plan_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """The size to generate at: about ``native``² pixels at the aspect ratio of
    ``width`` x ``height``, each side a multiple of ``multiple``."""
    aspect = width / height
    w = math.sqrt(native * native * aspect)
    h = w / aspect
    return (
        max(multiple * 4, round(w / multiple) * multiple),
        max(multiple * 4, round(h / multiple) * multiple),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    model: Resolved
    family: Family
    steps: int
    guidance: float
    width: int  # generated
    height: int
    #: the output size a refinement pass runs at, None without one
    refine_size: tuple[int, int] | None

    @property
    def refine(self) -> bool:
        return self.refine_size is not None

    @property
    def key(self) -> Hashable:
        return (
            self.model.name,
            self.steps,
            self.guidance,
            self.width,
            self.height,
            self.refine_size,
        )


class _X0Tap:
    """Catches the scheduler's prediction of the final latents at each step.

    ``callback_on_step_end`` sees only the noisy latents; a preview of those is
    mostly noise until the end. Schedulers know the predicted clean latents at
    every step, and this reads them from each ``step`` call.
    """

    def __init__(self, scheduler: Any) -> None:
        self.x0: torch.Tensor | None = None
        self._scheduler = scheduler
        self._step = scheduler.step
        scheduler.step = self._tapped

    def _tapped(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        scheduler = self._scheduler
        sigma = None
        if type(scheduler).__name__.startswith("FlowMatch") and scheduler.step_index is not None:
            sigma = scheduler.sigmas[scheduler.step_index]
        out = self._step(model_output, timestep, sample, *args, **kwargs)
        x0 = None
        if isinstance(out, tuple) and len(out) >= 2 and isinstance(out[1], torch.Tensor):
            x0 = out[1]
        elif getattr(out, "pred_original_sample", None) is not None:
            x0 = out.pred_original_sample
        elif sigma is not None:
            # Rectified flow: x_t = (1 - s) x0 + s noise and the model predicts
            # noise - x0, so x0 = x_t - s v.
            x0 = sample - sigma.to(sample.device, sample.dtype) * model_output
        elif str(getattr(scheduler.config, "algorithm_type", "")).endswith("dpmsolver++"):
            # DPM-Solver++ turns each model output into its x0 prediction.
            outputs = getattr(scheduler, "model_outputs", None)
            x0 = outputs[-1] if outputs else None
        self.x0 = x0
        return out

    def remove(self) -> None:
        self._scheduler.step = self._step


class _Loaded:
    def __init__(self, pipe: Any, nbytes: int) -> None:
        self.pipe = pipe
        self.nbytes = nbytes
        self.img2img: Any | None = None
        #: negative prompt -> its conditioning, one row (the img2img pipeline
        #: shares the text encoders)
        self.negatives: dict[str | None, Conditioning] = {}


class DiffusersEngine(Engine):
    name = "diffusers"

    def __init__(
        self,
        registry: Registry,
        *,
        device: str = "auto",
        memory_budget_gb: float | None = None,
        compile: bool = False,
        on_model_state: ModelStateCallback | None = None,
        preload: Sequence[str] = (),
        cpu_threads: int | None = None,
        workers: int = 1,
        broken_retry_s: float = BROKEN_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``workers``: the worker processes on this machine that share its memory
        (and its GPU); the default memory budget is split among them."""
        self.registry = registry
        self._preload = [registry.get(name).name for name in preload]
        self.device = _pick_device(device)
        self.dtype = _pick_dtype(self.device)
        if self.device.type == "cpu" and cpu_threads is not None:
            torch.set_num_threads(cpu_threads)
        self._budget = (
            int(memory_budget_gb * 2**30)
            if memory_budget_gb
            else _default_budget(self.device, max(1, workers))
        )
        self._compile = compile
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._on_model_state = on_model_state or (lambda name, state, detail: None)
        #: model -> (the message its load failed with, when)
        self._broken: dict[str, tuple[str, float]] = {}
        self._broken_retry_s = broken_retry_s
        self._clock = clock
        self._loading: str | None = None

    @property
    def memory_budget(self) -> int:
        """Bytes that loaded models may take in this worker."""
        return self._budget

    # -- planning -------------------------------------------------------------

    def plan(self, request: GenerationRequest) -> Plan:
        try:
            model = self.registry.resolve(request.system_version, request.mode, request.base_model)
        except RegistryError as exc:
            raise EngineError(str(exc)) from None
        family = FAMILIES[model.spec.family]
        width, height = plan_size(
            request.width, request.height, model.spec.resolution, family.multiple
        )
        return Plan(
            model=model,
            family=family,
            steps=model.steps_for(request.quality),
            guidance=model.guidance_for(request.creativity),
            width=width,
            height=height,
            refine_size=(request.width, request.height)
            if model.refines(request.quality) and family.img2img is not None
            else None,
        )

    def load(self) -> None:
        for name in self._preload:
            try:
                self.model(name)
            except EngineError as exc:
                log.error("preloading %s failed: %s", name, exc)

    def batch_key(self, request: GenerationRequest) -> Hashable | None:
        try:
            return self.plan(request).key
        except EngineError:
            return None

    # -- models ---------------------------------------------------------------

    def model(self, name: str) -> _Loaded:
        """The loaded pipeline of ``name``, loading it if needed: least recently used
        models are unloaded first until its estimated size fits the budget."""
        with self._lock:
            loaded = self._models.get(name)
            if loaded is not None:
                self._models.move_to_end(name)
                return loaded
            broken = self._broken.get(name)
            if broken is not None and self._clock() - broken[1] < self._broken_retry_s:
                # Fail fast: loading again so soon would fail again, and slowly.
                raise EngineError(broken[0])
            resolved = self.registry.get(name)
            estimate = estimate_bytes(resolved, self.dtype.itemsize)
            if estimate is not None:
                if estimate > self._budget:
                    log.warning(
                        "model %s needs about %.2f GB, more than the memory budget of "
                        "%.2f GB (OPENLETZ_MODEL_MEMORY_GB); unloading every other model",
                        name,
                        estimate / 2**30,
                        self._budget / 2**30,
                    )
                self._make_room(estimate, keep=None)
            self._loading = name
            self._on_model_state(name, "loading", None)
            started = time.monotonic()
            try:
                pipe = self._load(resolved, estimate)
            except EngineError as exc:
                self._broken[name] = (str(exc), self._clock())
                self._on_model_state(name, "broken", str(exc))
                raise
            finally:
                self._loading = None
            loaded = _Loaded(pipe, model_bytes(pipe))
            self._models[name] = loaded
            self._broken.pop(name, None)
            log.info(
                "model %s loaded in %.1f s (%.2f GB; estimated from its files: %s)",
                name,
                time.monotonic() - started,
                loaded.nbytes / 2**30,
                "unknown" if estimate is None else f"{estimate / 2**30:.2f} GB",
            )
            # The measured size is what counts from now on; if the estimate was
            # short, others make room now.
            self._make_room(0, keep=name)
            self._on_model_state(name, "ready", None)
            return loaded

    def _load(self, resolved: Resolved, estimate: int | None) -> Any:
        """``load_pipeline``; out of memory with other models loaded, those are
        unloaded and the load tried once more; out of memory alone, an
        :class:`EngineError` that says what to do."""
        retried = False
        while True:
            try:
                return load_pipeline(
                    resolved,
                    FAMILIES[resolved.spec.family],
                    device=self.device,
                    dtype=self.dtype,
                    compile=self._compile,
                    registry_path=str(self.registry.path),
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            # Out of the except block, so that the traceback's frames (and the
            # half-loaded pipeline they hold) can be freed.
            self._release_memory()
            if self._models and not retried:
                log.warning(
                    "out of memory loading %s (%s); unloading the other models and retrying",
                    resolved.name,
                    detail,
                )
                self._make_room(self._budget + 1, keep=None)
                retried = True
                continue
            raise EngineError(self._out_of_memory(resolved, estimate, detail))

    def _out_of_memory(self, resolved: Resolved, estimate: int | None, detail: str) -> str:
        where = "the GPU" if self.device.type == "cuda" else f"this machine ({self.device.type})"
        size = (
            f"about {estimate / 2**30:.1f} GB in {str(self.dtype).removeprefix('torch.')}"
            if estimate is not None
            else "its size unknown before loading"
        )
        share = "this GPU" if self.device.type == "cuda" else "this machine"
        return (
            f"The model {resolved.name!r} did not fit in memory: {where} ran out of memory "
            f"loading it ({size}; this worker's model memory budget is "
            f"{self._budget / 2**30:.1f} GB, and no other model was loaded"
            + (f"; {detail.rstrip('.')}" if detail else "")
            + "). Lower OPENLETZ_MODEL_MEMORY_GB, run fewer workers or fewer models on "
            f"{share}, or use a smaller variant of the model (fp16 weights, or a smaller "
            f"model in {self.registry.path})."
        )

    def _make_room(self, needed: int, keep: str | None) -> None:
        """Unload least recently used models (never ``keep``) until the loaded ones
        and ``needed`` more bytes fit the budget."""
        evicted = False
        while True:
            used = sum(m.nbytes for m in self._models.values())
            if used + needed <= self._budget:
                break
            victim = next((n for n in self._models if n != keep), None)
            if victim is None:
                break
            del self._models[victim]
            evicted = True
            log.info(
                "model %s unloaded (%.2f GB loaded and %.2f GB needed; budget %.2f GB)",
                victim,
                used / 2**30,
                needed / 2**30,
                self._budget / 2**30,
            )
            self._on_model_state(victim, "unloaded", None)
        if evicted:
            self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def model_states(self) -> dict[str, tuple[ModelState, str | None]]:
        """Each registry model's state in this worker, with the reason when broken:
        ``missing`` (not on this machine), ``local`` (on disk, not loaded),
        ``loading``, ``ready`` (loaded) or ``broken``."""
        loaded = set(self._models)
        loading = self._loading
        broken = dict(self._broken)
        states: dict[str, tuple[ModelState, str | None]] = {}
        for name in self.registry.models:
            if name in loaded:
                states[name] = ("ready", None)
            elif name == loading:
                states[name] = ("loading", None)
            elif name in broken:
                states[name] = ("broken", broken[name][0])
            else:
                states[name] = (disk_state(self.registry.get(name)), None)
        return states

    def loaded_models(self) -> list[str]:
        """The loaded models, least recently used first."""
        return list(self._models)

    def loaded_bytes(self) -> dict[str, int]:
        """Each loaded model's measured size in bytes."""
        return {name: loaded.nbytes for name, loaded in list(self._models.items())}

    # -- generating -----------------------------------------------------------

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        return only_image(self.generate_batch([request], [on_step]))

    def generate_unresized(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        return only_image(self.generate_batch_unresized([request], [on_step]))

    def generate_batch(
        self, requests: Sequence[GenerationRequest], on_steps: Sequence[StepCallback]
    ) -> list[Image.Image | BaseException]:
        """One pipeline call for requests with equal :meth:`batch_key`. Each result
        is an image, or the exception that ended that request (``Interrupted``);
        an error of the whole call is raised."""
        return self._generate_batch(requests, on_steps, exact=True)

    def generate_batch_unresized(
        self, requests: Sequence[GenerationRequest], on_steps: Sequence[StepCallback]
    ) -> list[Image.Image | BaseException]:
        """:meth:`generate_batch` without the last resize to the requested size (the
        caller's to make): the images come at the planned size, or, refined, at the
        requested size rounded down to multiples of 8."""
        return self._generate_batch(requests, on_steps, exact=False)

    def _generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_steps: Sequence[StepCallback],
        *,
        exact: bool,
    ) -> list[Image.Image | BaseException]:
        plan = self.plan(requests[0])
        if any(self.plan(r).key != plan.key for r in requests[1:]):
            raise ValueError("generate_batch takes requests of one batch key only")
        loaded = self.model(plan.model.name)
        total = plan.steps + (self._refine_steps(plan) if plan.refine else 0)
        stopped: dict[int, BaseException] = {}
        images = self._denoise(loaded, plan, requests, on_steps, stopped, offset=0, total=total)
        results: list[Image.Image | BaseException] = []
        finals: list[Image.Image] = []
        for i, request in enumerate(requests):
            if i in stopped:
                continue
            if exact or plan.refine:  # the refining pass starts from the requested size
                finals.append(imaging.resize(images[i], (request.width, request.height)))
            else:
                finals.append(images[i])
        if plan.refine and finals:
            live = [i for i in range(len(requests)) if i not in stopped]
            finals = self._refine(
                loaded,
                plan,
                [requests[i] for i in live],
                finals,
                [on_steps[i] for i in live],
                stopped,
                live,
                exact=exact,
            )
        it = iter(finals)
        for i in range(len(requests)):
            results.append(stopped[i] if i in stopped else next(it))
        return results

    def _refine_schedule(self, plan: Plan) -> int:
        """The ``num_inference_steps`` of the img2img pass: the model's steps, or more
        where so few that a pass of ``strength`` would have none (img2img runs the
        last ``int(steps x strength)`` of them: 0 for a one-step model at 0.5)."""
        refine = plan.model.spec.refine
        assert refine is not None
        steps = plan.steps
        while int(steps * refine.strength) < 1:
            steps += 1
        return steps

    def _refine_steps(self, plan: Plan) -> int:
        """The steps the img2img pass runs."""
        refine = plan.model.spec.refine
        assert refine is not None
        return int(self._refine_schedule(plan) * refine.strength)

    def _callback(
        self,
        plan: Plan,
        tap: _X0Tap,
        on_steps: Sequence[StepCallback],
        stopped: dict[int, BaseException],
        index_map: Sequence[int],
        offset: int,
        total: int,
        width: int,
        height: int,
    ) -> Callable[..., dict[str, Any]]:
        def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            latents = tap.x0 if tap.x0 is not None else kwargs["latents"]
            rgb: list[torch.Tensor] = []

            def preview_of(row: int) -> Callable[[], Image.Image]:
                def make() -> Image.Image:
                    if not rgb:
                        rgb.append(plan.family.latents_to_rgb(latents.detach(), width, height))
                    return Image.fromarray(rgb[0][row].numpy())

                return make

            for row, index in enumerate(index_map):
                if index in stopped:
                    continue
                try:
                    on_steps[index](StepUpdate(offset + step + 1, total, preview_of(row)))
                except Interrupted as exc:
                    stopped[index] = exc
            if all(index in stopped for index in index_map):
                # Nobody wants the rest: stop now, skipping the decode.
                raise Interrupted
            return kwargs

        return callback

    def _run(
        self,
        pipe: Any,
        family: Family,
        call_kwargs: dict[str, Any],
        make_callback: Callable[[_X0Tap], Callable[..., Any]],
    ) -> Any:
        tap = _X0Tap(pipe.scheduler)
        try:
            with torch.inference_mode():
                return pipe(
                    **call_kwargs,
                    **family.step_callback_kwargs(make_callback(tap)),
                    output_type="pil",
                ).images
        finally:
            tap.remove()

    def _conditioning(
        self, loaded: _Loaded, pipe: Any, plan: Plan, prompts: list[str]
    ) -> tuple[Conditioning, Conditioning] | None:
        """The texts' conditioning for a guided call, the negative prompt's made once
        per loaded model: every guided image needs it, and it cost as much as the
        prompt's own. A prompt that comes several times in a batch is encoded once.
        None for an unguided call, or a family whose pipeline encodes the texts
        itself."""
        if plan.guidance <= 1:
            return None
        family, negative_prompt = plan.family, plan.model.spec.negative_prompt
        rows = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        with torch.inference_mode():
            negative = loaded.negatives.get(negative_prompt)
            if negative is None:
                made = family.encode(pipe, [""], negative_prompt, guided=True)
                if made is None or made[1] is None:
                    return None
                negative = loaded.negatives[negative_prompt] = made[1]
            made = family.encode(pipe, list(rows), None, guided=False)
            if made is None:
                return None
            positive = made[0]
            if len(rows) < len(prompts):
                index = torch.tensor([rows[prompt] for prompt in prompts])
                positive = {k: v.index_select(0, index.to(v.device)) for k, v in positive.items()}
        return positive, negative

    def _denoise(
        self,
        loaded: _Loaded,
        plan: Plan,
        requests: Sequence[GenerationRequest],
        on_steps: Sequence[StepCallback],
        stopped: dict[int, BaseException],
        *,
        offset: int,
        total: int,
    ) -> list[Image.Image]:
        pipe = loaded.pipe
        prompts = [r.prompt for r in requests]
        indices = list(range(len(requests)))
        try:
            call = Call(
                prompts=prompts,
                negative_prompt=plan.model.spec.negative_prompt,
                steps=plan.steps,
                guidance=plan.guidance,
                width=plan.width,
                height=plan.height,
                generators=[self._generator(r.seed) for r in requests],
                conditioning=self._conditioning(loaded, pipe, plan, prompts),
            )
            images: list[Image.Image] = self._run(
                pipe,
                plan.family,
                plan.family.call_kwargs(call),
                lambda tap: self._callback(
                    plan, tap, on_steps, stopped, indices, offset, total, plan.width, plan.height
                ),
            )
        except Interrupted:
            if len(stopped) == len(requests):
                return []
            raise
        except torch.cuda.OutOfMemoryError as exc:
            raise EngineError(
                f"the GPU ran out of memory generating {len(requests)} image(s) of "
                f"{plan.width}x{plan.height} with {plan.model.name}; lower the batch size "
                "or the resolution, or give this worker a GPU of its own"
            ) from exc
        return images

    def _refine(
        self,
        loaded: _Loaded,
        plan: Plan,
        requests: Sequence[GenerationRequest],
        images: list[Image.Image],
        on_steps: Sequence[StepCallback],
        stopped: dict[int, BaseException],
        original_indices: Sequence[int],
        *,
        exact: bool,
    ) -> list[Image.Image]:
        """A second, gentle img2img pass at the requested size: the resize from the
        native size is smooth, the pass puts detail back at full resolution."""
        from openletz.engines.diffusers.loading import img2img_from

        if loaded.img2img is None:
            loaded.img2img = img2img_from(loaded.pipe, plan.family)
        refine = plan.model.spec.refine
        assert refine is not None
        width, height = requests[0].width, requests[0].height
        # The VAE needs multiples of 8; the final resize restores the exact size.
        w8, h8 = max(64, width // 8 * 8), max(64, height // 8 * 8)
        total = plan.steps + self._refine_steps(plan)
        local_steps = {i: on_steps[k] for k, i in enumerate(original_indices)}
        remap: dict[int, BaseException] = {}
        prompts = [r.prompt for r in requests]
        kwargs = plan.family.call_kwargs(
            Call(
                prompts=prompts,
                negative_prompt=plan.model.spec.negative_prompt,
                steps=self._refine_schedule(plan),
                guidance=plan.guidance,
                width=w8,
                height=h8,
                generators=[self._generator(r.seed + 1) for r in requests],
                conditioning=self._conditioning(loaded, loaded.img2img, plan, prompts),
            )
        )
        kwargs.pop("width", None)
        kwargs.pop("height", None)
        kwargs.pop("use_resolution_binning", None)
        kwargs["image"] = [imaging.resize(im, (w8, h8)) for im in images]
        kwargs["strength"] = refine.strength
        steps_list = [local_steps[i] for i in original_indices]
        try:
            refined: list[Image.Image] = self._run(
                loaded.img2img,
                plan.family,
                kwargs,
                lambda tap: self._callback(
                    plan,
                    tap,
                    steps_list,
                    remap,
                    list(range(len(requests))),
                    plan.steps,
                    total,
                    w8,
                    h8,
                ),
            )
        except Interrupted:
            refined = []
        for k, exc in remap.items():
            stopped[original_indices[k]] = exc
        if not exact:
            return [refined[k] for k in range(len(requests)) if k not in remap]
        return [
            imaging.resize(refined[k], (r.width, r.height))
            for k, r in enumerate(requests)
            if k not in remap
        ]

    def _generator(self, seed: int) -> torch.Generator:
        # CPU generators draw the same numbers on every machine, so a seed gives the
        # same image on a GPU server as on a laptop (up to the arithmetic).
        return torch.Generator("cpu").manual_seed(seed)

    def close(self) -> None:
        self._models.clear()
        gc.collect()


def _pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pick_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _default_budget(device: torch.device, workers: int = 1) -> int:
    """85 % of the GPU, or half the RAM, shared among the ``workers`` on this machine."""
    if device.type == "cuda":
        total = int(torch.cuda.get_device_properties(device).total_memory * 0.85)
    else:
        import os

        total = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    return total // workers
