"""Pure image functions: fitting, watermarking, encoding.

Nothing here touches the network, the database or the disk; every function takes
a Pillow image and returns a new image or bytes, so it can run in a worker thread.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

#: The sized versions the API exposes next to ``original``, largest first: each one
#: is fitted from the one before it (see :func:`render_versions`).
VERSION_BOXES: dict[str, tuple[int, int]] = {
    "1920x1920": (1920, 1920),
    "640x640": (640, 640),
    "240x240": (240, 240),
    "96x96": (96, 96),
}

# Pillow first shrinks by an integer factor with a box filter and only then runs its
# filter on an image at most this many times the target size. At 3.0 the result is
# visually indistinguishable from a plain pass and several times faster on big
# reductions.
_REDUCING_GAP = 3.0


@dataclass(frozen=True, slots=True)
class _Format:
    pil_name: str
    content_type: str
    extension: str


_FORMATS: dict[str, _Format] = {
    "jpeg": _Format("JPEG", "image/jpeg", "jpg"),
    "png": _Format("PNG", "image/png", "png"),
    "webp": _Format("WEBP", "image/webp", "webp"),
}


def _format(fmt: str) -> _Format:
    try:
        return _FORMATS[fmt]
    except KeyError:
        known = ", ".join(_FORMATS)
        raise ValueError(f"unknown image format {fmt!r} (expected one of: {known})") from None


# Pillow holds the GIL while it encodes into a Python buffer (BytesIO), and releases
# it while it encodes into a file descriptor. A worker encodes the last image's
# versions while its engine's thread makes the next one, and that thread runs Python
# between its kernels: encoded into a buffer, every JPEG would stop it for as long
# as the encode takes. An anonymous in-memory file (Linux) is a file descriptor.
_MEMFD = hasattr(os, "memfd_create")


def _saved(image: Image.Image, pil_format: str, **params: Any) -> bytes:
    """``image.save(..., pil_format, **params)`` as bytes, without holding the GIL
    through the encode where the system allows (see ``_MEMFD``)."""
    if _MEMFD:
        fd = os.memfd_create("openletz-image", os.MFD_CLOEXEC)
        with open(fd, "w+b") as file:
            image.save(file, pil_format, **params)
            file.seek(0)
            return file.read()
    buffer = io.BytesIO()
    image.save(buffer, pil_format, **params)
    return buffer.getvalue()


def content_type(fmt: str) -> str:
    return _format(fmt).content_type


def extension(fmt: str) -> str:
    return _format(fmt).extension


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB; transparency is flattened onto white, not black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fitted_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size ``size`` takes when fitted inside ``box``: aspect kept, never enlarged."""
    width, height = size
    box_w, box_h = box
    if width <= box_w and height <= box_h:
        return size
    scale = min(box_w / width, box_h / height)
    # The clamps matter at the edges: round() may overshoot the box by one pixel, and
    # a very thin image could otherwise lose a side entirely.
    return (
        max(1, min(box_w, round(width * scale))),
        max(1, min(box_h, round(height * scale))),
    )


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resampled to exactly ``size`` (bicubic, antialiased when it shrinks).

    Every resize of a picture goes through here: the last one to the requested size
    and each version's. Where the process has torch loaded (a diffusers worker),
    torch's 8-bit kernel does it, five to seven times faster than Pillow (it is
    vectorised) for the same filter, within three levels of Pillow's result; elsewhere
    (the API, a sandbox worker) Pillow does, and torch is not imported for it.
    """
    if size == image.size:
        return image.copy()
    torch = sys.modules.get("torch")
    if torch is not None and image.mode in ("RGB", "RGBA") and hasattr(torch, "from_numpy"):
        return _torch_resize(torch, image, size)
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)


def _torch_resize(torch: Any, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # Height x width x channels as one contiguous block, seen by torch as a 1 x C x H
    # x W batch in channels-last order: the layout its vectorised uint8 path takes.
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        out = torch.nn.functional.interpolate(
            pixels, size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False
        )
    # The result comes one plane per channel. Pillow interleaves planes (merge) ten
    # times faster than a strided copy to height x width x channels does, which
    # would cost as much as the resize itself.
    return Image.merge(image.mode, [Image.fromarray(plane) for plane in out[0].numpy()])


def fit(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """A copy of ``image`` fitted inside ``box``: aspect kept, never enlarged."""
    return resize(image, fitted_size(image.size, box))


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # load_default(size=...) parses the embedded font each call; images of one size
    # arrive over and over, so keep the parsed font.
    return ImageFont.load_default(size=size)


# Modes that survive a round trip through RGBA without loss; anything else (P, CMYK,
# I;16...) is turned into RGB first, since a palette would be requantised anyway.
_RGBA_SAFE_MODES = frozenset({"RGB", "RGBA", "L", "LA"})

_TEXT_ALPHA = 180  # out of 255: readable, yet the picture shows through
_SHADOW_ALPHA = 140


def watermark(image: Image.Image, text: str) -> Image.Image:
    """A copy of ``image`` with ``text`` in the bottom-right corner.

    White, semi-transparent text over a soft dark outline, so it reads on light and
    dark pictures alike. Size and mode are kept (RGB in, RGB out).
    """
    if not text:
        return image.copy()
    base = image.copy() if image.mode in _RGBA_SAFE_MODES else to_rgb(image)
    width, height = base.size
    short = min(width, height)
    font_px = max(10, round(short * 0.03))
    margin = max(2, round(short * 0.02))
    stroke = max(1, round(font_px * 0.08))
    offset = max(1, round(font_px * 0.05))
    blur = max(0.5, font_px * 0.04)

    font = _font(font_px)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    # Room around the glyphs for the shadow's offset and blur, so neither is cut off.
    pad = stroke + offset + int(blur * 3) + 1
    layer_w = int(right - left) + 2 * pad
    layer_h = int(bottom - top) + 2 * pad
    origin = (pad - int(left), pad - int(top))

    text_mask = Image.new("L", (layer_w, layer_h), 0)
    ImageDraw.Draw(text_mask).text(origin, text, fill=_TEXT_ALPHA, font=font)
    shadow_mask = Image.new("L", (layer_w, layer_h), 0)
    ImageDraw.Draw(shadow_mask).text(
        (origin[0] + offset, origin[1] + offset),
        text,
        fill=_SHADOW_ALPHA,
        font=font,
        stroke_width=stroke,
        stroke_fill=_SHADOW_ALPHA,
    )
    shadow_mask = shadow_mask.filter(ImageFilter.GaussianBlur(blur))

    # Masks are drawn on their own and turned into colour afterwards: drawing
    # translucent ink straight onto a transparent RGBA layer would blend the white
    # towards the layer's black and grey the anti-aliased edges.
    overlay = Image.new("RGBA", (layer_w, layer_h), (0, 0, 0, 0))
    overlay.putalpha(shadow_mask)
    white = Image.new("RGBA", (layer_w, layer_h), (255, 255, 255, 0))
    white.putalpha(text_mask)
    overlay = Image.alpha_composite(overlay, white)

    # Place the glyphs (not the padded layer) at the margin; clip to the picture so
    # a long text on a tiny image loses its left end rather than failing.
    x0 = width - margin - (layer_w - pad)
    y0 = height - margin - (layer_h - pad)
    region = (max(0, x0), max(0, y0), min(width, x0 + layer_w), min(height, y0 + layer_h))
    if region[0] >= region[2] or region[1] >= region[3]:
        return base
    overlay = overlay.crop((region[0] - x0, region[1] - y0, region[2] - x0, region[3] - y0))
    # Composite only the small patch under the text: the rest of a multi-megapixel
    # image is left untouched and the cost stays independent of the image size.
    patch = Image.alpha_composite(base.crop(region).convert("RGBA"), overlay)
    base.paste(patch.convert(base.mode), region[:2])
    return base


def encode(image: Image.Image, fmt: str, *, quality: int) -> bytes:
    """``image`` as ``fmt`` ("jpeg", "png" or "webp"); ``quality`` (1-100) is for jpeg/webp."""
    spec = _format(fmt)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100, not {quality}")
    if spec.pil_name == "JPEG":
        source = image if image.mode in ("RGB", "L") else to_rgb(image)
        return _saved(source, "JPEG", quality=quality, optimize=True, progressive=False)
    if spec.pil_name == "WEBP":
        # method 4 (Pillow's default) costs about twice method 2 for a few percent of
        # size; these files are written once per job while a user waits.
        source = image if image.mode in ("RGB", "RGBA") else to_rgb(image)
        buffer = io.BytesIO()
        source.save(buffer, "WEBP", quality=quality, method=2)
        return buffer.getvalue()
    # Level 3 is most of level 6's compression at a fraction of its time on
    # photographic content, which barely compresses anyway.
    return _saved(image, "PNG", compress_level=3)


def _smaller(source: Image.Image | None, image: Image.Image) -> Image.Image:
    """Whichever of ``image`` and ``source`` (the picture ``image`` was resized from,
    if any) has fewer pixels: the one to resize from next."""
    if source is None or source.width * source.height >= image.width * image.height:
        return image
    return source


def render_versions(
    image: Image.Image,
    *,
    has_watermark: bool,
    watermark_text: str,
    fmt: str,
    quality: int,
    source: Image.Image | None = None,
) -> dict[str, bytes]:
    """Encoded ``original`` plus every :data:`VERSION_BOXES` entry, in that order.

    The watermark goes on the full-size picture first, so every version carries it.
    ``source`` is the picture that ``image`` was resized from, if it was (an
    engine's output at its model's own size): an unwatermarked image's versions are
    resized from it wherever it has fewer pixels than the version before, which is
    less work and one resampling of the engine's own pixels instead of two.
    """
    _format(fmt)  # fail before any work on an unknown format
    original = watermark(image, watermark_text) if has_watermark else image
    if has_watermark:
        source = None  # the versions carry the watermark: they come from the original
    out = {"original": encode(original, fmt, quality=quality)}
    last_image, last = original, out["original"]
    for name, box in VERSION_BOXES.items():
        # Each version is resized from the previous (larger) one rather than from the
        # original: the boxes shrink by 3x or less per step, so the source always has
        # ample resolution for a clean result, while the 240 and 96 versions
        # cost a 640-pixel resize instead of a multi-megapixel one. The target size is
        # still computed from the original, so chained rounding cannot drift a pixel.
        size = fitted_size(original.size, box)
        # Never enlarged: a box at least as large as the picture holds the same
        # pixels, and gets the same bytes instead of another encode.
        if size != last_image.size:
            last_image = resize(_smaller(source, last_image), size)
            last = encode(last_image, fmt, quality=quality)
        out[name] = last
    return out


def render_delivery(
    image: Image.Image,
    size: tuple[int, int],
    *,
    has_watermark: bool,
    watermark_text: str,
    fmt: str,
    quality: int,
    preview_max_side: int = 256,
) -> tuple[dict[str, bytes], bytes]:
    """What a worker makes of an engine's picture: the encoded versions
    (:func:`render_versions`) of ``image`` resized to exactly ``size``, and the
    job's preview. The smaller pictures are resized from ``image`` itself wherever
    it has fewer pixels: one resampling of the engine's own, and fewer pixels."""
    source = None if image.size == size else image
    final = image if source is None else resize(image, size)
    versions = render_versions(
        final,
        has_watermark=has_watermark,
        watermark_text=watermark_text,
        fmt=fmt,
        quality=quality,
        source=source,
    )
    return versions, preview_jpeg(final, max_side=preview_max_side, source=source)


def preview_jpeg(
    image: Image.Image,
    max_side: int = 256,
    quality: int = 70,
    *,
    source: Image.Image | None = None,
) -> bytes:
    """A small, quickly made JPEG of ``image`` (longest side at most ``max_side``),
    resized from ``source`` (the picture ``image`` was resized from) where that has
    fewer pixels, as :func:`render_versions` does."""
    size = fitted_size(image.size, (max_side, max_side))
    # Called several times a second while a picture is being generated, and once
    # for the finished one (the job's preview).
    return _saved(to_rgb(resize(_smaller(source, image), size)), "JPEG", quality=quality)
