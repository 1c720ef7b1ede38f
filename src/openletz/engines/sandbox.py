"""A weight-free stand-in engine for development, client integration tests and the test suite.

It is NOT a model: it paints a deterministic abstract picture (a gradient, soft shapes
and the prompt as a caption, labelled "openletz sandbox") and paces itself step by step
like a diffusion sampler, with previews that go from noise to the final picture. That
lets the whole server - queueing, progress, previews, interrupts, storage - run without
a GPU or any weights.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import math
import random
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from openletz.engines.base import Engine, GenerationRequest, StepCallback, StepUpdate

__all__ = ["MAX_QUALITY", "PREVIEW_MAX_SIDE", "SandboxEngine", "render_image"]

MAX_QUALITY = 5
PREVIEW_MAX_SIDE = 256
# The picture itself is smooth, so painting it at a capped resolution and upscaling once
# is indistinguishable from painting at full size and keeps a 2160px render cheap.
_CANVAS_MAX_SIDE = 640
_CAPTION_MAX_LINES = 3
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))

_Array = npt.NDArray[np.float32]
_Rgb = tuple[float, float, float]
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


class SandboxEngine(Engine):
    name = "sandbox"

    def __init__(
        self,
        *,
        duration_s: float = 4.0,
        steps_per_quality: int = 6,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
        if steps_per_quality < 1:
            raise ValueError(f"steps_per_quality must be >= 1, got {steps_per_quality!r}")
        self._steps_per_quality = steps_per_quality
        # duration_s is the wall time at the default quality 2; higher quality means more
        # steps of the same length, as with a real sampler.
        self._step_s = duration_s / (steps_per_quality * 2)
        self._sleep = sleep

    def generate(self, request: GenerationRequest, on_step: StepCallback) -> Image.Image:
        _validate(request)
        total = self._steps_per_quality * request.quality
        final = render_image(request)
        previews = _Previews(final, _layout_digest(request))
        for k in range(1, total + 1):
            if self._step_s > 0:
                self._sleep(self._step_s)
            # Interrupted raised here propagates untouched: nothing is returned.
            on_step(StepUpdate(step=k, total=total, preview=previews.at(k, total)))
        return final


def render_image(request: GenerationRequest) -> Image.Image:
    """The final sandbox picture for ``request``: RGB, exactly ``width`` x ``height``."""
    _validate(request)
    width, height = request.width, request.height
    scale = min(1.0, _CANVAS_MAX_SIDE / max(width, height))
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))

    rng = random.Random(int.from_bytes(_layout_digest(request), "big"))
    palette = _palette(_palette_digest(request))
    # creativity only shapes the picture, it is not validated: 1..5 spans tame to wild
    wild = min(max((request.creativity - 1) / 4, 0.0), 1.0)

    canvas = _Canvas(cw, ch)
    canvas.gradient(palette, rng.uniform(0, 2 * math.pi))
    for _ in range(1 + round(wild * 2)):
        canvas.band(_shape_colour(palette, rng, wild), rng, wild)
    for _ in range(5 + round(wild * 10)):
        canvas.disc(_shape_colour(palette, rng, wild), rng, wild)
    canvas.vignette()

    image = Image.fromarray(canvas.to_uint8(), "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    _draw_caption(image, request.prompt)
    _draw_label(image, request.seed)
    return image


def _validate(request: GenerationRequest) -> None:
    for field, value in (("width", request.width), ("height", request.height)):
        if value <= 0:
            raise ValueError(f"{field} must be > 0, got {value!r}")
    if not 1 <= request.quality <= MAX_QUALITY:
        raise ValueError(f"quality must be between 1 and {MAX_QUALITY}, got {request.quality!r}")


def _digest(*parts: object) -> bytes:
    # JSON keeps field boundaries unambiguous ("a", "bc") != ("ab", "c").
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=32).digest()


def _palette_digest(request: GenerationRequest) -> bytes:
    # Colours follow prompt and seed only, so one prompt+seed keeps its look at any size.
    return _digest("palette", request.prompt, request.seed)


def _layout_digest(request: GenerationRequest) -> bytes:
    return _digest(
        "layout",
        request.prompt,
        request.seed,
        request.width,
        request.height,
        request.mode,
        request.system_version,
        request.creativity,
    )


def _palette(digest: bytes) -> list[_Rgb]:
    """Three harmonious colours, dark to bright, so the gradient has depth."""
    hue = digest[0] / 256
    # analogous, split-complementary or triadic: all read as chosen rather than random
    spread = (0.08, 0.42, 1 / 3)[digest[1] % 3]
    hues = (hue, (hue + spread) % 1.0, (hue - spread) % 1.0)
    values = (
        0.30 + digest[2] / 255 * 0.2,
        0.55 + digest[3] / 255 * 0.2,
        0.80 + digest[4] / 255 * 0.18,
    )
    sats = [0.45 + b / 255 * 0.4 for b in digest[5:8]]
    return [colorsys.hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sats, values, strict=True)]


def _shape_colour(palette: list[_Rgb], rng: random.Random, wild: float) -> tuple[_Rgb, float]:
    h, s, v = colorsys.rgb_to_hsv(*rng.choice(palette))
    # creativity lets shapes wander off the palette and stand out more
    h = (h + rng.uniform(-0.5, 0.5) * wild) % 1.0
    v = min(1.0, max(0.1, v + rng.uniform(-0.25, 0.25)))
    alpha = rng.uniform(0.3, 0.55 + 0.35 * wild)
    return colorsys.hsv_to_rgb(h, s, v), alpha


def _smooth_edge(distance: _Array, inner: float) -> _Array:
    """1 up to ``inner``, 0 from 1 on, smoothstep between (no transcendental functions,
    so pixels do not depend on the CPU's SIMD flavour of exp/sin)."""
    t = np.clip((1.0 - distance) / np.float32(1.0 - inner), 0.0, 1.0)
    edge: _Array = t * t * (3.0 - 2.0 * t)
    return edge


def _centred_coords(count: int, side: int) -> _Array:
    """Pixel centres along one axis, 0 at the middle, in units of the longest side."""
    coords = (np.arange(count, dtype=np.float32) + np.float32(0.5 - count / 2)) / np.float32(side)
    return coords.astype(np.float32, copy=False)


class _Canvas:
    """Float RGB in 0..1 at canvas resolution; coordinates keep circles round."""

    def __init__(self, width: int, height: int) -> None:
        side = max(width, height)
        self.width, self.height = width, height
        # shape sizes follow the image's area so tall/wide images are not over- or under-filled
        self.extent = math.sqrt(width * height) / side
        self.half_w, self.half_h = width / (2 * side), height / (2 * side)
        self.xs = _centred_coords(width, side)[None, :]
        self.ys = _centred_coords(height, side)[:, None]
        self.rgb: _Array = np.zeros((height, width, 3), dtype=np.float32)

    def gradient(self, palette: list[_Rgb], angle: float) -> None:
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        proj = self.xs * cos + self.ys * sin
        reach = np.float32(
            (abs(float(cos)) * self.width + abs(float(sin)) * self.height)
            / (2 * max(self.width, self.height))
        )
        t = (proj + reach) / (2 * reach)
        lo = np.clip(t * 2, 0.0, 1.0)[..., None]
        hi = np.clip(t * 2 - 1, 0.0, 1.0)[..., None]
        c0, c1, c2 = (np.asarray(c, dtype=np.float32) for c in palette)
        self.rgb[...] = c0 + (c1 - c0) * lo + (c2 - c1) * hi

    def disc(self, colour: tuple[_Rgb, float], rng: random.Random, wild: float) -> None:
        rgb, alpha = colour
        side = max(self.width, self.height)
        cx, cy = rng.uniform(-self.half_w, self.half_w), rng.uniform(-self.half_h, self.half_h)
        radius = rng.uniform(0.05, 0.16 + 0.22 * wild) * self.extent
        inner = rng.uniform(0.0, 0.6 - 0.4 * wild)
        # only the bounding box is touched: most discs cover a small part of the canvas
        x0 = max(0, math.floor((cx - radius) * side + self.width / 2))
        x1 = min(self.width, math.ceil((cx + radius) * side + self.width / 2))
        y0 = max(0, math.floor((cy - radius) * side + self.height / 2))
        y1 = min(self.height, math.ceil((cy + radius) * side + self.height / 2))
        if x0 >= x1 or y0 >= y1:
            return
        dx = self.xs[:, x0:x1] - np.float32(cx)
        dy = self.ys[y0:y1, :] - np.float32(cy)
        distance = np.sqrt(dx * dx + dy * dy) / np.float32(radius)
        self._blend((slice(y0, y1), slice(x0, x1)), rgb, _smooth_edge(distance, inner) * alpha)

    def band(self, colour: tuple[_Rgb, float], rng: random.Random, wild: float) -> None:
        rgb, alpha = colour
        angle = rng.uniform(0, math.pi)
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        across = self.ys * cos - self.xs * sin
        along = self.xs * cos + self.ys * sin
        # a cubic bend instead of a sine wave: wilder bands curl more
        bend = np.float32(rng.uniform(-1, 1) * (0.2 + 1.6 * wild))
        centre = (
            across
            - np.float32(rng.uniform(-0.6, 0.6) * min(self.half_w, self.half_h))
            - bend * (along * along * along - along * np.float32(0.25))
        )
        half_width = np.float32(rng.uniform(0.04, 0.12 + 0.1 * wild) * self.extent)
        distance = (np.abs(centre) / half_width).astype(np.float32, copy=False)
        self._blend((slice(None), slice(None)), rgb, _smooth_edge(distance, 0.1) * alpha)

    def vignette(self) -> None:
        r2 = self.xs * self.xs + self.ys * self.ys
        self.rgb *= (1.0 - 0.35 * r2)[..., None]

    def to_uint8(self) -> npt.NDArray[np.uint8]:
        out: npt.NDArray[np.uint8] = np.clip(self.rgb * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        return out

    def _blend(self, region: tuple[slice, slice], rgb: _Rgb, weight: _Array) -> None:
        target = self.rgb[region]
        target += (np.asarray(rgb, dtype=np.float32) - target) * weight[..., None]


@functools.lru_cache(maxsize=32)
def _font(size: int) -> _Font:
    return ImageFont.load_default(size=size)


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: _Font, max_width: float) -> list[str]:
    lines: list[str] = []
    words = text.split()
    current = ""
    overflow = False
    for word in words:
        candidate = f"{current} {word}" if current else word
        if current and draw.textlength(candidate, font=font) > max_width:
            lines.append(current)
            current = word
            if len(lines) == _CAPTION_MAX_LINES:
                overflow = True
                break
        else:
            current = candidate
    if not overflow and current:
        lines.append(current)
    if overflow:
        lines[-1] += " ..."
    # single long words (or the "..." itself) may still be too wide: trim from the end
    return [_fit(line, draw, font, max_width) for line in lines]


def _fit(line: str, draw: ImageDraw.ImageDraw, font: _Font, max_width: float) -> str:
    if draw.textlength(line, font=font) <= max_width:
        return line
    while len(line) > 1 and draw.textlength(line + "...", font=font) > max_width:
        line = line[:-1]
    return line.rstrip() + "..."


def _draw_caption(image: Image.Image, prompt: str) -> None:
    width, height = image.size
    size = max(10, round(min(width, height) * 0.045))
    font = _font(size)
    draw = ImageDraw.Draw(image)
    lines = _wrap(prompt.strip() or "(empty prompt)", draw, font, width * 0.84)
    line_height = round(size * 1.3)
    text_width = max(draw.textlength(line, font=font) for line in lines)
    pad = round(size * 0.6)
    bottom = round(height * 0.9)
    top = bottom - line_height * len(lines)

    # a soft dark panel keeps white text legible over any palette
    box = (
        max(0, round((width - text_width) / 2) - pad),
        max(0, top - pad),
        min(width, round((width + text_width) / 2) + pad),
        min(height, bottom + pad // 2),
    )
    if box[0] < box[2] and box[1] < box[3]:
        mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
        ImageDraw.Draw(mask).rounded_rectangle(
            (0, 0, mask.width - 1, mask.height - 1), radius=pad, fill=120
        )
        image.paste((0, 0, 0), box, mask)

    stroke = max(1, size // 14)
    for i, line in enumerate(lines):
        x = (width - draw.textlength(line, font=font)) / 2
        draw.text(
            (x, top + i * line_height),
            line,
            font=font,
            fill=(255, 255, 255),
            stroke_width=stroke,
            stroke_fill=(20, 20, 20),
        )


def _draw_label(image: Image.Image, seed: int) -> None:
    size = max(9, round(min(image.size) * 0.024))
    margin = round(size * 0.7)
    ImageDraw.Draw(image).text(
        (margin, margin),
        f"openletz sandbox - seed {seed}",
        font=_font(size),
        fill=(255, 255, 255),
        stroke_width=max(1, size // 10),
        stroke_fill=(0, 0, 0),
    )


def _preview_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, PREVIEW_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Previews:
    """Per-step previews: the final picture under noise that fades as steps finish.

    All work that does not depend on the step is done once here, so a preview is a
    couple of array operations on a <=256px image.
    """

    def __init__(self, final: Image.Image, digest: bytes) -> None:
        size = _preview_size(*final.size)
        small = (
            final
            if final.size == size
            else final.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        )
        self._final_u8 = np.asarray(small, dtype=np.uint8).copy()
        self._final = self._final_u8.astype(np.float32)
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        self._noise = (self._noise_field(rng, size), self._noise_field(rng, size))

    @staticmethod
    def _noise_field(rng: np.random.Generator, size: tuple[int, int]) -> _Array:
        # Coarse colour noise upscaled: decoded latent noise is blotchy, not per-pixel.
        coarse = (max(1, size[1] // 2), max(1, size[0] // 2), 3)
        grain = Image.fromarray(rng.integers(0, 256, coarse, dtype=np.uint8), "RGB")
        field = np.asarray(grain.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        return field / np.float32(127.5) - np.float32(1.0)

    def at(self, step: int, total: int) -> Callable[[], Image.Image]:
        weight = (1.0 - step / total) ** 1.5
        # Rotating between two independent fields keeps the noise level steady while
        # making each step's noise differ, as a sampler's would.
        angle = step * _GOLDEN_ANGLE
        return functools.partial(self._render, weight, math.cos(angle), math.sin(angle))

    def _render(self, weight: float, cos: float, sin: float) -> Image.Image:
        if weight <= 0.0:
            return Image.fromarray(self._final_u8.copy(), "RGB")
        noise = self._noise[0] * np.float32(cos) + self._noise[1] * np.float32(sin)
        mixed = self._final * np.float32(1.0 - weight) + (noise * 100.0 + 128.0) * np.float32(
            weight
        )
        return Image.fromarray(np.clip(mixed, 0.0, 255.0).astype(np.uint8), "RGB")
