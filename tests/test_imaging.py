from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from openletz import imaging


def _picture(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A busy gradient, so resampling and watermarking have something to change."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x ^ y) & 255]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8)).convert(mode)


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((1600, 900), (640, 640), (640, 360)),
        ((2160, 2160), (1920, 1920), (1920, 1920)),
        ((900, 1600), (240, 240), (135, 240)),
        ((1000, 1), (96, 96), (96, 1)),
        ((1, 1000), (96, 96), (1, 96)),
        ((5000, 3), (96, 96), (96, 1)),  # 0.06 px tall would round to 0
    ],
)
def test_fit_exact_sizes(
    size: tuple[int, int], box: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert imaging.fit(_picture(*size), box).size == expected


def test_fit_thin_portrait_rounds_to_nearest() -> None:
    fitted = imaging.fit(_picture(520, 2160), (96, 96))
    # 520 * 96 / 2160 = 23.1: the long side fills the box, the short one is rounded.
    assert fitted.size == (round(520 * 96 / 2160), 96) == (23, 96)


@pytest.mark.parametrize("size", [(640, 640), (100, 50), (96, 96), (1, 1)])
def test_fit_never_enlarges_and_returns_a_copy(size: tuple[int, int]) -> None:
    image = _picture(*size)
    fitted = imaging.fit(image, (640, 640))
    assert fitted.size == size
    assert fitted is not image
    assert fitted.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    "size", [(1600, 900), (520, 2160), (2160, 2160), (3000, 641), (777, 1333), (1024, 1000)]
)
@pytest.mark.parametrize("box", list(imaging.VERSION_BOXES.values()))
def test_fit_keeps_aspect_within_a_pixel(size: tuple[int, int], box: tuple[int, int]) -> None:
    width, height = imaging.fitted_size(size, box)
    assert 1 <= width <= box[0]
    assert 1 <= height <= box[1]
    assert width <= size[0]
    assert height <= size[1]
    # Each side is within a pixel of the exactly scaled one.
    scale = min(1.0, box[0] / size[0], box[1] / size[1])
    assert abs(size[0] * scale - width) <= 1
    assert abs(size[1] * scale - height) <= 1
    # One side touches the box unless the image already fitted.
    assert width == min(box[0], size[0]) or height == min(box[1], size[1])


def test_fit_keeps_mode() -> None:
    assert imaging.fit(_picture(800, 600, "RGBA"), (96, 96)).mode == "RGBA"


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (128, 128, 128)])
def test_watermark_marks_only_the_bottom_right(colour: tuple[int, int, int]) -> None:
    image = Image.new("RGB", (1000, 700), colour)
    marked = imaging.watermark(image, "openletz")
    assert marked.size == image.size
    assert marked.mode == "RGB"
    assert image.getpixel((999, 699)) == colour  # the input is left alone

    before = np.asarray(image, dtype=np.int16)
    after = np.asarray(marked, dtype=np.int16)
    changed = np.argwhere(np.any(before != after, axis=-1))
    assert len(changed) > 0
    rows, cols = changed[:, 0], changed[:, 1]
    assert rows.min() > 700 * 0.8
    assert cols.min() > 1000 * 0.5
    # The margin keeps the text off the very edge.
    assert rows.max() < 699
    assert cols.max() < 999
    top_left = (slice(0, 350), slice(0, 500))
    assert np.array_equal(before[top_left], after[top_left])


def test_watermark_shows_on_light_and_dark() -> None:
    for colour, brighter in (((0, 0, 0), True), ((255, 255, 255), False)):
        image = Image.new("RGB", (800, 800), colour)
        after = np.asarray(imaging.watermark(image, "openletz"), dtype=np.int16)
        delta = after - np.asarray(image, dtype=np.int16)
        # White text lifts a dark picture; the dark shadow dents a light one.
        assert (delta.max() > 100) if brighter else (delta.min() < -60)


def test_watermark_scales_with_the_image() -> None:
    def marked_height(side: int) -> int:
        image = Image.new("RGB", (side, side), (20, 20, 20))
        diff = np.any(np.asarray(imaging.watermark(image, "Hg")) != np.asarray(image), axis=-1)
        rows = np.flatnonzero(diff.any(axis=1))
        return int(rows.max() - rows.min() + 1)

    assert marked_height(2000) > 2.5 * marked_height(500)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_watermark_keeps_mode_and_size(mode: str) -> None:
    image = _picture(300, 200, mode)
    marked = imaging.watermark(image, "a rather long watermark text for a tiny image")
    assert marked.mode == mode
    assert marked.size == image.size


def test_watermark_on_a_tiny_image() -> None:
    image = _picture(8, 8)
    assert imaging.watermark(image, "openletz").size == (8, 8)


def test_empty_watermark_is_a_copy() -> None:
    image = _picture(200, 100)
    marked = imaging.watermark(image, "")
    assert marked is not image
    assert marked.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension", "pil_format"),
    [
        ("jpeg", "image/jpeg", "jpg", "JPEG"),
        ("png", "image/png", "png", "PNG"),
        ("webp", "image/webp", "webp", "WEBP"),
    ],
)
def test_encode_round_trips(fmt: str, content_type: str, extension: str, pil_format: str) -> None:
    image = _picture(320, 200)
    decoded = _decode(imaging.encode(image, fmt, quality=90))
    assert decoded.format == pil_format
    assert decoded.size == (320, 200)
    assert imaging.content_type(fmt) == content_type
    assert imaging.extension(fmt) == extension
    error = np.abs(np.asarray(decoded.convert("RGB"), np.int16) - np.asarray(image, np.int16))
    assert error.mean() < 6
    if fmt == "png":
        assert error.max() == 0


def test_encode_jpeg_flattens_alpha() -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    decoded = _decode(imaging.encode(image, "jpeg", quality=90))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((32, 32)) == pytest.approx((255, 255, 255), abs=2)


def test_encode_quality_changes_size() -> None:
    image = _picture(400, 400)
    assert len(imaging.encode(image, "jpeg", quality=30)) < len(
        imaging.encode(image, "jpeg", quality=95)
    )


@pytest.mark.parametrize(
    ("fmt", "mode", "save"),
    [
        ("jpeg", "RGB", {"quality": 85, "optimize": True, "progressive": False}),
        ("jpeg", "L", {"quality": 85, "optimize": True, "progressive": False}),
        ("png", "RGBA", {"compress_level": 3}),
        ("png", "P", {"compress_level": 3}),
    ],
)
def test_encode_gives_the_bytes_of_an_encode_into_a_buffer(
    fmt: str, mode: str, save: dict[str, object]
) -> None:
    image = _picture(300, 200, mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt.upper(), **save)
    assert imaging.encode(image, fmt, quality=85) == buffer.getvalue()


@pytest.mark.skipif(not imaging._MEMFD, reason="no anonymous memory files here")
def test_jpeg_is_encoded_into_a_file_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow releases the GIL only while it encodes into a file descriptor: a worker's
    # engine thread runs beside these encodes, and would otherwise wait for each.
    targets: list[bool] = []
    save = Image.Image.save

    def spy(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fileno = getattr(fp, "fileno", None)
        targets.append(callable(fileno) and isinstance(fileno(), int))
        save(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", spy)
    imaging.render_versions(
        _picture(700, 500), has_watermark=True, watermark_text="x", fmt="jpeg", quality=80
    )
    imaging.preview_jpeg(_picture(700, 500))
    assert targets
    assert all(targets)


@pytest.mark.parametrize("fmt", ["gif", "JPEG", "jpg", ""])
def test_unknown_format_is_refused(fmt: str) -> None:
    image = _picture(10, 10)
    for call in (
        lambda: imaging.encode(image, fmt, quality=80),
        lambda: imaging.content_type(fmt),
        lambda: imaging.extension(fmt),
        lambda: imaging.render_versions(
            image, has_watermark=False, watermark_text="", fmt=fmt, quality=80
        ),
    ):
        with pytest.raises(ValueError, match=repr(fmt)):
            call()


@pytest.mark.parametrize("quality", [0, 101])
def test_encode_refuses_bad_quality(quality: int) -> None:
    with pytest.raises(ValueError, match="quality"):
        imaging.encode(_picture(10, 10), "jpeg", quality=quality)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (
            (2160, 2160),
            {
                "original": (2160, 2160),
                "1920x1920": (1920, 1920),
                "640x640": (640, 640),
                "240x240": (240, 240),
                "96x96": (96, 96),
            },
        ),
        (
            (1600, 1600),
            {
                "original": (1600, 1600),
                "1920x1920": (1600, 1600),
                "640x640": (640, 640),
                "240x240": (240, 240),
                "96x96": (96, 96),
            },
        ),
        (
            (520, 2160),
            {
                "original": (520, 2160),
                "1920x1920": (462, 1920),
                "640x640": (154, 640),
                "240x240": (58, 240),
                "96x96": (23, 96),
            },
        ),
        (
            (640, 640),
            {
                "original": (640, 640),
                "1920x1920": (640, 640),
                "640x640": (640, 640),
                "240x240": (240, 240),
                "96x96": (96, 96),
            },
        ),
    ],
)
def test_render_versions_sizes(size: tuple[int, int], expected: dict[str, tuple[int, int]]) -> None:
    versions = imaging.render_versions(
        _picture(*size), has_watermark=True, watermark_text="openletz", fmt="jpeg", quality=85
    )
    assert list(versions) == ["original", *imaging.VERSION_BOXES]
    assert {name: _decode(data).size for name, data in versions.items()} == expected
    for name, data in versions.items():
        if name != "original":
            box = imaging.VERSION_BOXES[name]
            assert _decode(data).size == imaging.fitted_size(size, box)


def test_render_versions_watermark_is_optional() -> None:
    image = Image.new("RGB", (800, 800), (0, 0, 0))
    plain = imaging.render_versions(
        image, has_watermark=False, watermark_text="openletz", fmt="png", quality=90
    )
    marked = imaging.render_versions(
        image, has_watermark=True, watermark_text="openletz", fmt="png", quality=90
    )
    assert _decode(plain["original"]).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert _decode(marked["original"]).getextrema() != ((0, 0), (0, 0), (0, 0))
    # The sized versions are cut from the watermarked original.
    assert _decode(marked["640x640"]).getextrema() != ((0, 0), (0, 0), (0, 0))


def test_render_versions_resize_from_the_smaller_source() -> None:
    # An engine's 700x400 picture, resized to the 1600x900 asked for: each smaller
    # version is one resampling of the engine's pixels where those are fewer than
    # the version before's, and the original stays the resized picture.
    source = _picture(700, 400)
    image = imaging.resize(source, (1600, 900))
    versions = imaging.render_versions(
        image, has_watermark=False, watermark_text="", fmt="png", quality=90, source=source
    )
    assert versions["original"] == imaging.encode(image, "png", quality=90)
    assert versions["1920x1920"] is versions["original"]
    v640 = imaging.resize(source, (640, 360))
    assert versions["640x640"] == imaging.encode(v640, "png", quality=90)
    # The 640 version has fewer pixels than the source: the next comes from it.
    v240 = imaging.resize(v640, (240, 135))
    assert versions["240x240"] == imaging.encode(v240, "png", quality=90)
    assert versions["96x96"] == imaging.encode(imaging.resize(v240, (96, 54)), "png", quality=90)
    # The sizes are those of the versions without a source.
    plain = imaging.render_versions(
        image, has_watermark=False, watermark_text="", fmt="png", quality=90
    )
    assert {n: _decode(d).size for n, d in versions.items()} == {
        n: _decode(d).size for n, d in plain.items()
    }


def test_render_versions_of_a_larger_source_come_from_the_image() -> None:
    source = _picture(800, 800)
    image = imaging.resize(source, (520, 520))
    with_source = imaging.render_versions(
        image, has_watermark=False, watermark_text="", fmt="png", quality=90, source=source
    )
    plain = imaging.render_versions(
        image, has_watermark=False, watermark_text="", fmt="png", quality=90
    )
    assert with_source == plain


def test_watermarked_versions_come_from_the_watermarked_original() -> None:
    source = Image.new("RGB", (200, 200), (0, 0, 0))
    image = imaging.resize(source, (800, 800))
    marked = imaging.render_versions(
        image, has_watermark=True, watermark_text="openletz", fmt="png", quality=90, source=source
    )
    assert marked == imaging.render_versions(
        image, has_watermark=True, watermark_text="openletz", fmt="png", quality=90
    )
    assert _decode(marked["640x640"]).getextrema() != ((0, 0), (0, 0), (0, 0))


def test_preview_jpeg_resizes_from_the_smaller_source() -> None:
    source = _picture(64, 48)
    image = imaging.resize(source, (1600, 1200))
    preview = imaging.preview_jpeg(image, max_side=256, source=source)
    assert _decode(preview).size == (256, 192)
    assert preview == imaging.preview_jpeg(imaging.resize(source, (256, 192)), max_side=256)
    # A source with more pixels than the image is not used.
    assert imaging.preview_jpeg(source, max_side=32, source=image) == imaging.preview_jpeg(
        source, max_side=32
    )


def test_render_versions_leaves_the_input_alone() -> None:
    image = _picture(700, 500)
    snapshot = image.tobytes()
    imaging.render_versions(image, has_watermark=True, watermark_text="x", fmt="webp", quality=80)
    assert image.tobytes() == snapshot


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((2160, 2160), 256, (256, 256)),
        ((1600, 900), 256, (256, 144)),
        ((520, 2160), 256, (62, 256)),
        ((100, 60), 256, (100, 60)),
        ((1000, 500), 64, (64, 32)),
    ],
)
def test_preview_jpeg_size(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    preview = _decode(imaging.preview_jpeg(_picture(*size), max_side=max_side))
    assert preview.format == "JPEG"
    assert preview.mode == "RGB"
    assert preview.size == expected
    assert max(preview.size) <= max_side


def test_preview_jpeg_accepts_rgba() -> None:
    assert _decode(imaging.preview_jpeg(_picture(300, 300, "RGBA"))).mode == "RGB"


def test_to_rgb() -> None:
    rgb = _picture(4, 4)
    assert imaging.to_rgb(rgb) is rgb
    assert imaging.to_rgb(rgb.convert("L")).mode == "RGB"
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert imaging.to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "size", "target"),
    [
        ("RGB", (64, 64), (520, 520)),  # a tiny model's image, enlarged to the smallest size
        ("RGB", (1080, 720), (640, 427)),
        ("RGB", (520, 520), (240, 240)),
        ("RGBA", (300, 200), (97, 61)),
        ("RGB", (1024, 576), (1080, 607)),
    ],
)
def test_resize_with_torch_is_pillows_bicubic(
    monkeypatch: pytest.MonkeyPatch, mode: str, size: tuple[int, int], target: tuple[int, int]
) -> None:
    # A diffusers worker (torch loaded) resizes with torch's kernel; any other process
    # with Pillow's. Both are the same antialiased bicubic filter.
    pytest.importorskip("torch")
    image = _picture(*size, mode)
    with_torch = imaging.resize(image, target)
    monkeypatch.delitem(sys.modules, "torch")
    with_pillow = imaging.resize(image, target)
    assert with_torch.size == with_pillow.size == target
    assert with_torch.mode == with_pillow.mode == mode
    diff = np.abs(np.asarray(with_torch, np.int16) - np.asarray(with_pillow, np.int16))
    assert diff.max() <= 3
    assert diff.mean() < 0.5


def test_resize_does_not_import_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # The API process and a sandbox worker resize too, and never pay for torch.
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    out = imaging.resize(_picture(50, 40), (120, 96))
    assert out.size == (120, 96)
    assert "torch" not in sys.modules


def test_resize_to_the_same_size_is_a_copy() -> None:
    image = _picture(30, 20)
    out = imaging.resize(image, (30, 20))
    assert out is not image
    assert out.tobytes() == image.tobytes()
