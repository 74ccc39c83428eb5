"""MNIST-style image preparation (digits.imageprep): each step, real MNIST digits, and fuzzed files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from digits import idx, imageprep
from digits.imageprep import ImageError


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed greyscale PNG declaring ``width``×``height`` whose pixel data is a few zero rows only
    (a decompression bomb's shape: tiny file, huge image)."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")


def from_bytes(data: bytes) -> np.ndarray:
    return imageprep.prepare(imageprep.greyscale(imageprep.decode(data, "x")), "x")


def bar(h: int, w: int, top: int, left: int, bh: int, bw: int, ink: float = 1.0, bg: float = 0.0) -> np.ndarray:
    grey = np.full((h, w), bg, np.float32)
    grey[top : top + bh, left : left + bw] = ink
    return grey


@pytest.fixture(scope="module")
def mnist_digits(mnist_raw: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 300 real MNIST test digits (``mnist_raw``: the repo's data/raw, else the real download code)."""
    images = idx.decode((mnist_raw / "t10k-images-idx3-ubyte").read_bytes())[:300]
    labels = idx.decode((mnist_raw / "t10k-labels-idx1-ubyte").read_bytes())[:300]
    return images, labels


def test_polarity_dark_on_light_equals_light_on_dark():
    light_on_dark = bar(60, 40, 10, 15, 40, 8)
    dark_on_light = 1 - light_on_dark
    np.testing.assert_allclose(imageprep.prepare(dark_on_light), imageprep.prepare(light_on_dark), atol=1e-6)
    assert imageprep.ink_map(dark_on_light).max() == 1 and imageprep.ink_map(dark_on_light)[0, 0] == 0


def test_grey_background_and_faint_ink_are_stretched():
    ink = imageprep.ink_map(bar(30, 30, 5, 5, 10, 10, ink=0.55, bg=0.35))
    assert ink.max() == pytest.approx(1) and ink.min() == 0


def test_bounding_box_is_the_ink_extent():
    assert imageprep.bounding_box(bar(50, 60, 7, 11, 20, 5)) == (7, 27, 11, 16)


def test_fit_keeps_the_aspect_ratio_longest_side_20():
    assert imageprep.fit_box(np.ones((40, 10), np.float32)).shape == (20, 5)
    assert imageprep.fit_box(np.ones((6, 12), np.float32)).shape == (10, 20)
    assert imageprep.fit_box(np.ones((1, 300), np.float32)).shape == (1, 20)


def test_centre_of_mass_lands_on_the_frame_centre():
    out = imageprep.prepare(bar(100, 100, 0, 0, 30, 10))  # a bar in the top-left corner
    cy, cx = imageprep.centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 + 1e-6 and abs(cx - 14) <= 0.5 + 1e-6
    ys, xs = np.nonzero(out > 0.5)
    assert ys.max() - ys.min() + 1 == 20  # the longest side fills the 20 px box


def test_real_mnist_digits_come_back_almost_unchanged(mnist_digits):
    """An MNIST digit already is size-normalised and centred: preparing it again changes little."""
    images, _ = mnist_digits
    diffs = [np.abs(imageprep.prepare(im / 255.0) - im / 255.0).mean() for im in images]
    assert np.median(diffs) < 0.005 and max(diffs) < 0.1


@pytest.mark.parametrize("polarity", ["light-on-dark", "dark-on-light"])
@pytest.mark.parametrize(("scale", "canvas"), [(1, (28, 28)), (10, (280, 280)), (4, (200, 150))])
def test_scaled_coloured_digit_files_prepare_like_the_original(mnist_digits, polarity, scale, canvas):
    image = mnist_digits[0][0]
    ink = image if polarity == "light-on-dark" else 255 - image
    rgb = np.stack([ink, (ink * 0.5).astype(np.uint8), 255 - ink // 2], -1)  # a coloured digit
    digit = Image.fromarray(rgb, "RGB").resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    img = Image.new("RGB", canvas, tuple(int(c) for c in rgb[0, 0]))
    img.paste(digit, (canvas[0] - 28 * scale, 0))  # off-centre on a canvas of another shape
    out = from_bytes(png_bytes(img))
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.abs(out - imageprep.prepare(image / 255.0)).mean() < 0.05


def test_transparent_background_uses_alpha():
    alpha = (bar(40, 40, 5, 15, 30, 8) * 255).astype(np.uint8)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 3] = alpha  # black strokes on a fully transparent canvas
    out = from_bytes(png_bytes(Image.fromarray(rgba, "RGBA")))
    np.testing.assert_allclose(out, imageprep.prepare(bar(40, 40, 5, 15, 30, 8)), atol=0.02)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty file"),
        (b"not an image at all", "not a PNG/JPEG"),
        (png_header_only(100_000, 100_000), "decompression bomb"),  # Pillow's own guard
        (png_header_only(8000, 8000), r"8000×8000 pixels is outside the accepted size"),  # ours, lower
        (png_bytes(Image.new("L", (1, 1), 0)), "no digit found"),
        (png_bytes(Image.new("RGB", (64, 48), "white")), "no digit found"),
        (png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)))[:2000], "damaged"),
    ],
    ids=["empty", "text", "bomb", "huge-dims", "1x1", "blank-page", "truncated"],
)
def test_bad_files_raise_a_clear_image_error(data, match):
    with pytest.raises(ImageError, match=match):
        from_bytes(data)


def test_load_names_the_file_and_missing_files_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="nope.png: cannot read"):
        imageprep.load(tmp_path / "nope.png")
    (tmp_path / "blank.png").write_bytes(png_bytes(Image.new("L", (20, 20), 255)))
    with pytest.raises(ImageError, match=r"blank\.png: no digit found"):
        imageprep.load(tmp_path / "blank.png")


def check(data: bytes) -> None:
    """A fuzzed file gives a valid 28×28 image or an ImageError; never another exception."""
    try:
        out = from_bytes(data)
    except ImageError as exc:
        assert str(exc).startswith("x: ")
        return
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 and out.sum() > 0


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_PNG = png_bytes(Image.fromarray((bar(40, 30, 5, 10, 30, 8) * 255).astype(np.uint8)))
VALID_JPEG = png_bytes(Image.fromarray((bar(40, 30, 5, 10, 30, 8) * 255).astype(np.uint8)), "JPEG")


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data):
    check(data)


@FUZZ
@given(st.sampled_from([VALID_PNG, VALID_JPEG]), st.integers(0, 400), st.binary(max_size=16))
def test_fuzz_truncated_and_corrupted_files(base, cut, junk):
    check(base[:cut] + junk)
    pos = cut % len(base)
    check(base[:pos] + junk + base[pos + len(junk) :])  # bytes overwritten in place


@FUZZ
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_fuzz_declared_dimensions(width, height):
    check(png_header_only(width, height))


@FUZZ
@given(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=64)),
    st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP"]),
)
def test_fuzz_valid_images_of_any_content_and_size(arr, fmt):
    if arr.ndim == 3:
        arr = arr[..., : [1, 3, 4][arr.shape[2] % 3]] if arr.shape[2] >= 3 else arr[..., 0]
    arr = arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr
    img = Image.fromarray(arr)
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    check(png_bytes(img, fmt))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("RGB", "BMP"),
        ("P", "GIF"),
        ("RGB", "WEBP"),
    ],
)
def test_other_pixel_modes_and_formats(mode, fmt):
    grey = bar(40, 30, 5, 10, 30, 8)
    if mode == "I;16":
        img = Image.fromarray((grey * 60000).astype(np.uint16))
    else:
        img = Image.fromarray((grey * 255).astype(np.uint8)).convert(mode)
    assert img.mode == mode
    assert np.abs(from_bytes(png_bytes(img, fmt)) - imageprep.prepare(grey)).mean() < 0.03  # JPEG/WEBP are lossy


def test_large_images_are_reduced_before_the_float_conversion():
    img = Image.fromarray((bar(4000, 3000, 500, 1000, 3000, 800) * 255).astype(np.uint8))
    grey = imageprep.greyscale(img)
    assert max(grey.shape) <= 2 * imageprep.WORK_SIDE
    small = imageprep.prepare(bar(40, 30, 5, 10, 30, 8))
    assert np.abs(imageprep.prepare(grey) - small).mean() < 0.03  # at most a 1 px shift of the centring
