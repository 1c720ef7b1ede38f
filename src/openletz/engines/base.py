"""The contract between the worker and whatever makes pixels.

An engine runs inside a worker process, in a thread of its own, and calls
``on_step`` once per denoising step. ``on_step`` may raise :class:`Interrupted`,
which must propagate out of :meth:`Engine.generate` at once (no decode).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    quality: int
    creativity: int
    system_version: int
    mode: str
    seed: int
    base_model: str | None = None


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """One finished denoising step.

    ``preview`` renders the predicted final image at this step (small, RGB); it is
    a function so that the caller pays for a preview only when it wants one. Call
    it within the step callback: once that has returned, the engine may have moved
    on. ``None`` when the engine has none for this step (an engine in another
    process sends one at most every ``preview_interval_s``).
    """

    step: int  # steps finished, 1..total
    total: int
    preview: Callable[[], Image.Image] | None = None


StepCallback = Callable[[StepUpdate], None]


class Interrupted(Exception):
    """Raised by a step callback to stop a generation; carries no image."""


class EngineError(Exception):
    """A generation failed for a reason the user should read (it becomes ``progressMessage``)."""


def only_image(results: Sequence[Image.Image | BaseException]) -> Image.Image:
    """The image of a one-request batch's results, or the exception that ended
    that request, raised: :meth:`Engine.generate` of an engine that batches."""
    (result,) = results
    if isinstance(result, BaseException):
        raise result
    return result


class Engine(ABC):
    #: short name shown in /health and in each image object
    name: str

    def load(self) -> None:  # noqa: B027 - optional hook
        """Warm up (load weights, allocate buffers) before the first job."""

    @abstractmethod
    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        """Make one image of exactly ``request.width`` x ``request.height`` pixels."""

    @property
    def batches(self) -> bool:
        """Whether this engine runs compatible requests as one call."""
        return type(self).batch_key is not Engine.batch_key

    @property
    def queues_calls(self) -> bool:
        """Whether a call made while another one runs waits its turn inside the
        engine, and begins the moment that one ends (an engine in a process of its
        own). A worker then makes its next call at the last step of the one under
        way, so that the engine does not sit idle between calls while the worker
        claims and sends the next job. An engine that runs a call in the caller's
        thread (False) is given one call at a time."""
        return False

    def batch_key(self, request: GenerationRequest) -> Hashable | None:
        """Requests with the same key (not ``None``) may run as one batch. The key
        depends on the request's fields but its prompt and seed (those differ within
        any batch): a worker keeps the keys it has been given by those fields."""
        return None

    def generate_batch(
        self, requests: Sequence[GenerationRequest], on_steps: Sequence[StepCallback]
    ) -> list[Image.Image | BaseException]:
        """Requests of one :meth:`batch_key`: an image each, or the exception that
        ended that one (``Interrupted``, ``EngineError``). Engines that can run a
        batch as one call override this; here they run one after the other."""
        results: list[Image.Image | BaseException] = []
        for request, on_step in zip(requests, on_steps, strict=True):
            try:
                results.append(self.generate(request, on_step))
            except (Interrupted, EngineError) as exc:
                results.append(exc)
        return results

    def generate_unresized(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        """:meth:`generate`, except that the image may come at another size with
        (about) the requested aspect ratio, which the caller resizes to the request's
        size (``imaging.resize``). A worker does that while it delivers the image, beside its
        next engine call, so an engine that ends with a resize on the CPU (generated
        near its model's native size) frees its device sooner. By default,
        :meth:`generate`."""
        return self.generate(request, on_step)

    def generate_batch_unresized(
        self, requests: Sequence[GenerationRequest], on_steps: Sequence[StepCallback]
    ) -> list[Image.Image | BaseException]:
        """:meth:`generate_batch` with images as :meth:`generate_unresized` gives them."""
        return self.generate_batch(requests, on_steps)

    def model_states(self) -> Mapping[str, tuple[str, str | None]]:
        """Each model this engine can run, with its state here (``missing``,
        ``local``, ``loading``, ``ready`` or ``broken``) and the reason when broken.
        An engine without models (the sandbox) has none."""
        return {}

    def abandon(self) -> bool:
        """Give up on the call under way, which neither returned nor stopped at a
        step long past the job's timeout (a driver call that hangs). An engine that
        can go on without it (its model runs in a process that can be replaced)
        does so and returns True, and that call then ends with an error; by default
        False: a thread cannot be stopped, so the worker process ends."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`load` took."""
