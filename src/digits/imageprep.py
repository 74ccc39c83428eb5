"""MNIST-style preparation of an arbitrary digit image: any size, colour and polarity → 28×28 like MNIST.

The steps follow how MNIST itself was made: greyscale; polarity detection (the border's median brightness is the
background; a light background is inverted, so ink is bright on black); background removed and contrast
stretched; crop to the ink's bounding box; scale the longest side to 20 px keeping the aspect ratio
(anti-aliased); paste into 28×28 so the centre of mass lands on the centre.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digits.errors import UserError

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MAX_PIXELS = 50_000_000  # declared size above this is refused before decoding (decompression bombs)
MAX_FILE_BYTES = 50 * 1024 * 1024
WORK_SIDE = 1024  # larger images are first reduced to this longest side (ink keeps its shape)
MIN_CONTRAST = 0.15  # ink must differ from the background by this much of the full scale
INK_THRESHOLD = 0.2  # share of the peak ink above which a pixel counts for the bounding box
BOX, SIDE = 20, 28


class ImageError(UserError, ValueError):
    """The file cannot be turned into a digit image; the message says why."""


def decode(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode image bytes into a Pillow image, refusing empty, unknown, truncated and oversized files."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: {len(data):,} bytes is over the {MAX_FILE_BYTES:,}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = img.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {width}×{height} pixels is outside the accepted size (1 to {MAX_PIXELS:,} pixels)"
                )
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a {'/'.join(FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:  # truncated or corrupt data
        raise ImageError(f"{name}: damaged image data ({exc})") from None
    return img


def greyscale(img: Image.Image) -> np.ndarray:
    """Luminance as float32 in [0, 1], reduced on the way to at most about 2 × WORK_SIDE on the longest side.
    Transparency is flattened onto the shade that contrasts with the ink; 16/32-bit images are min-max scaled."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode.startswith(("I", "F")):
        img = img.convert("F")
    else:
        img = img.convert("LA" if img.mode in ("RGBA", "RGBa", "LA", "La") else "L")
    factor = max(img.size) // WORK_SIDE
    if factor > 1:
        img = img.reduce(factor)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        return ((arr - lo) / (hi - lo) if np.isfinite(hi - lo) and hi > lo else np.zeros_like(arr)).astype(np.float32)
    grey = np.asarray(img.getchannel("L"), np.float32) / 255
    if img.mode == "LA":
        alpha = np.asarray(img.getchannel("A"), np.float32) / 255
        weight = float(alpha.sum())
        ink = float((grey * alpha).sum()) / weight if weight > 0 else 0.0
        background = 1.0 if ink < 0.5 else 0.0
        grey = grey * alpha + background * (1 - alpha)
    return grey


def shrink(grey: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """Reduce so the longest side is at most ``side`` (area averaging)."""
    h, w = grey.shape
    if max(h, w) <= side:
        return grey
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(grey, "F").resize(size, Image.Resampling.BOX), np.float32)


def border(grey: np.ndarray) -> np.ndarray:
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def ink_map(grey: np.ndarray, name: str = "<image>") -> np.ndarray:
    """Bright ink on a zero background, peak 1: invert a light background, subtract it, stretch the contrast."""
    background = float(np.median(border(grey)))
    if background > 0.5:
        grey, background = 1 - grey, 1 - background
    peak = float(grey.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError(f"{name}: no digit found (blank or nearly uniform image)")
    return np.clip((grey - background) / (peak - background), 0, 1).astype(np.float32)


def bounding_box(ink: np.ndarray, threshold: float = INK_THRESHOLD) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the pixels above ``threshold``."""
    rows, cols = np.flatnonzero((ink > threshold).any(1)), np.flatnonzero((ink > threshold).any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """Scale so the longest side is ``box`` px, keeping the aspect ratio (the short side at least 1 px)."""
    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.LANCZOS if scale > 1 else Image.Resampling.BOX
    return np.clip(np.asarray(Image.fromarray(ink, "F").resize(size, resample), np.float32), 0, 1)


def centre_of_mass(patch: np.ndarray) -> tuple[float, float]:
    total = float(patch.sum())
    ys, xs = np.indices(patch.shape)
    return float((ys * patch).sum() / total), float((xs * patch).sum() / total)


def centre_in_frame(patch: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Place ``patch`` in a ``side``×``side`` frame with its centre of mass at the frame's centre (kept inside)."""
    h, w = patch.shape
    cy, cx = centre_of_mass(patch)
    top = int(np.clip(round(side / 2 - cy), 0, side - h))
    left = int(np.clip(round(side / 2 - cx), 0, side - w))
    frame = np.zeros((side, side), np.float32)
    frame[top : top + h, left : left + w] = patch
    return frame


def prepare(grey: np.ndarray, name: str = "<image>") -> np.ndarray:
    """A greyscale image (float, [0, 1], any size) → float32 [28, 28] in [0, 1], MNIST-style."""
    ink = ink_map(shrink(grey), name)
    top, bottom, left, right = bounding_box(ink)
    patch = fit_box(ink[top:bottom, left:right])
    if patch.sum() <= 0:
        raise ImageError(f"{name}: no digit found (the ink vanished when scaled)")
    return centre_in_frame(patch)


def load(path: str | Path) -> np.ndarray:
    """Read an image file and prepare it (see ``prepare``); an unusable file raises ImageError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return from_bytes(data, str(path))


def from_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes and prepare them (see ``prepare``); unusable data raises ImageError naming ``name``."""
    img = decode(data, name)
    try:
        grey = greyscale(img)
    except (OSError, SyntaxError, ValueError) as exc:  # e.g. a malformed EXIF block or palette
        raise ImageError(f"{name}: damaged image data ({exc})") from None
    return prepare(grey, name)
