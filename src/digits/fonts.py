"""Digits rendered from fonts: an out-of-distribution set that no MNIST writer made.

``FAMILIES`` lists the font families: typeset ones bundled with matplotlib and handwriting ones from Debian packages
(scripts/font-packages.txt). ``find`` locates a family's font files and keeps those that really draw the digits 0–9.
``render`` draws each image with Pillow: one digit from a font of its family at a random size, stroke width, slant and
position, prepared exactly as digits-predict prepares a photo (``imageprep.prepare``) → uint8 28×28.
"""

from __future__ import annotations

import difflib
import logging
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import matplotlib
import numpy as np
import torch
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from digits import data, files, imageprep
from digits.errors import UserError

if TYPE_CHECKING:
    from digits.params import RenderParams

MATPLOTLIB = "matplotlib"
DEBIAN_FONTS = Path("/usr/share/fonts")
PARTS = ("selection", "heldout")


@dataclass(frozen=True)
class Family:
    name: str
    kind: Literal["typeset", "handwriting"]
    source: str  # "matplotlib", or the Debian package that ships the fonts
    patterns: tuple[str, ...]  # globs under the source's font directory


def _typeset(name: str, *patterns: str) -> Family:
    return Family(name, "typeset", MATPLOTLIB, patterns)


def _handwriting(name: str, package: str, *patterns: str) -> Family:
    return Family(name, "handwriting", package, patterns)


FAMILIES = {f.name: f for f in (
    _typeset("DejaVu Sans", "DejaVuSans.ttf", "DejaVuSans-*.ttf"),
    _typeset("DejaVu Sans Mono", "DejaVuSansMono*.ttf"),
    _typeset("DejaVu Serif", "DejaVuSerif.ttf", "DejaVuSerif-*.ttf"),
    _typeset("STIX", "STIX*.ttf"),  # only STIXGeneral*: the size variants and STIXNonUni have no digits
    _typeset("Computer Modern", "cm*10.ttf"),  # cmsy10 and cmex10 have symbols at 0–9; cmmi10 old-style digits
    _handwriting("Comic Neue", "fonts-comic-neue", "opentype/comic-neue/*.otf"),
    _handwriting("DKG Handwriting", "fonts-dkg-handwriting", "truetype/fifthhorseman/dkg*.ttf"),
    _handwriting("Breip", "fonts-breip", "truetype/breip/Breip.ttf"),  # breipfont.ttf: another version of it
    *(_handwriting(f"Because We {hand}", "fonts-bwht", f"opentype/bwht/BecauseWe{hand}-*.otf")
      for hand in ("Build", "Connect", "Create", "Learn", "Mentor", "Organize")),  # six hands, one package
    _handwriting("Dancing Script", "fonts-dancingscript", "opentype/dancingscript/*.otf"),
    _handwriting("Femke Klaver", "fonts-femkeklaver", "truetype/femkeklaver/*.ttf"),
    _handwriting("Humor Sans", "fonts-humor-sans", "truetype/humor-sans/*.ttf"),
    _handwriting("Joscelyn", "fonts-joscelyn", "opentype/joscelyn/*.otf"),
    _handwriting("Ecolier", "fonts-ecolier-court", "truetype/ecolier-court/*.ttf"),
    _handwriting("Kaushan Script", "fonts-kaushanscript", "opentype/kaushanscript/*.otf"),
    _handwriting("Kristi", "fonts-kristi", "truetype/kristi/*.ttf"),
    _handwriting("Rufscript", "fonts-rufscript", "truetype/rufscript/*.ttf"),
    _handwriting("Delphine", "fonts-sjfonts", "truetype/sjfonts/Delphine.ttf"),
    _handwriting("Steve Hand", "fonts-sjfonts", "truetype/sjfonts/SteveHand.ttf"),
)}  # fmt: skip

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ANONYMOUS_GLYPH = re.compile(r"(uni|u|glyph|cid|g)[0-9A-Fa-f]+$")  # glyph names that say nothing about the glyph
CHECK_SIZE = 48
logging.getLogger("fontTools").setLevel(logging.ERROR)  # e.g. "extra bytes in post.stringData" of a usable font


class FontError(UserError, ValueError):
    """The render params name font families that are unknown or cannot be used; the message says which."""


@dataclass(frozen=True)
class Font:
    family: str
    source: str
    name: str  # the file's path relative to its source's font directory
    path: Path


@dataclass
class Found:
    """What ``find`` found: usable fonts by family, the font files left out and the families left out, each with
    the reason."""

    fonts: dict[str, list[Font]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # "source:name" -> why it cannot draw the digits
    missing: dict[str, str] = field(default_factory=dict)  # family -> why it is left out


def font_dirs() -> dict[str, Path]:
    """The font directory of each kind of source: matplotlib's bundled fonts and Debian's font tree."""
    return {MATPLOTLIB: Path(matplotlib.get_data_path()) / "fonts" / "ttf", "debian": DEBIAN_FONTS}


def check_names(parts: Mapping[str, Sequence[str]]) -> None:
    """Every family named in ``parts`` (part -> family names) must be in ``FAMILIES``."""
    unknown = []
    for part, names in parts.items():
        for name in (n for n in names if n not in FAMILIES):
            hint = difflib.get_close_matches(name, FAMILIES, n=1)
            guess = f" (did you mean {hint[0]!r}?)" if hint else ""
            unknown.append(f"render.{part}: unknown font family {name!r}{guess}")
    if unknown:
        raise FontError("; ".join(unknown) + f" (known families: {', '.join(FAMILIES)})")


def digit_problem(path: Path) -> str | None:
    """Why the font file ``path`` cannot draw the digits 0–9, or None when it can: each digit needs a glyph in
    the character map, named as that digit (symbol fonts put other glyphs there), that draws some ink, and the ten
    must differ (not one placeholder box, "tofu", for all)."""
    try:
        with TTFont(path, lazy=True) as tt:
            cmap = tt.getBestCmap() or {}
        font = ImageFont.truetype(str(path), CHECK_SIZE)
    except Exception as exc:  # fontTools and FreeType raise many types for damaged files
        return f"unreadable ({type(exc).__name__}: {exc})"
    absent = [str(d) for d in range(10) if ord(str(d)) not in cmap]
    if absent:
        return f"no glyph for {', '.join(absent)}"
    names = [cmap[ord(str(d))] for d in range(10)]
    wrong = [n for d, n in enumerate(names) if not (n.startswith(DIGIT_NAMES[d]) or ANONYMOUS_GLYPH.match(n))]
    if wrong:
        return f"its glyphs at 0–9 are no digits ({', '.join(wrong)})"
    drawn = [_draw(font, str(d), 0).tobytes() for d in range(10)]
    blank = [str(d) for d in range(10) if not any(drawn[d])]
    if blank:
        return f"blank glyph for {', '.join(blank)}"
    if len(set(drawn)) < 10:
        return "the same glyph for different digits (tofu)"
    return None


def find(families: Sequence[str], dirs: Mapping[str, Path] | None = None) -> Found:
    """The usable font files of each family in ``families`` (names from ``FAMILIES``), in ``dirs`` (default
    ``font_dirs()``). A family whose source is absent, or without one usable file, is left out (``missing``)."""
    dirs = dirs or font_dirs()
    found = Found()
    for name in families:
        family = FAMILIES[name]
        root = dirs[MATPLOTLIB if family.source == MATPLOTLIB else "debian"]
        paths = sorted({p for pattern in family.patterns for p in root.glob(pattern) if p.is_file()})
        for path in paths:
            font = Font(name, family.source, path.relative_to(root).as_posix(), path)
            if problem := digit_problem(path):
                found.skipped[f"{family.source}:{font.name}"] = problem
            else:
                found.fonts.setdefault(name, []).append(font)
        if name not in found.fonts:
            where = f"{', '.join(family.patterns)} in {root}"
            absent = f"no {where}" if family.source == MATPLOTLIB else f"{family.source} is not installed (no {where})"
            found.missing[name] = f"no font draws the digits 0–9 ({where})" if paths else absent
    return found


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package, None without dpkg or the package."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def sources(fonts: Sequence[Font]) -> dict[str, dict]:
    """Per source of ``fonts``: its version (matplotlib's, or the Debian package's), its font directory and each
    file's path in it with its MD5."""
    out: dict[str, dict] = {}
    for font in sorted(fonts, key=lambda f: (f.source != MATPLOTLIB, f.source, f.name)):
        if font.source not in out:
            bundled = font.source == MATPLOTLIB
            out[font.source] = {
                "version": matplotlib.__version__ if bundled else debian_version(font.source),
                "directory": "matplotlib/mpl-data/fonts/ttf" if bundled else str(DEBIAN_FONTS),
                "files": {},
            }
        out[font.source]["files"][font.name] = files.md5_file(font.path)
    return out


def _draw(font: ImageFont.FreeTypeFont, digit: str, stroke: int, slant: float = 0.0,
          offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:  # fmt: skip
    """``digit`` drawn white on black, centred at ``offset`` px from the middle of a canvas it fits on, then sheared
    by ``slant`` (x moves by slant × the height above the middle: positive leans right); uint8."""
    left, top, right, bottom = font.getbbox(digit, stroke_width=stroke, anchor="mm")
    reach = max(abs(left), abs(right), abs(top), abs(bottom))
    half = int(reach * (1 + abs(slant)) + max(map(abs, offset))) + 4
    canvas = Image.new("L", (2 * half, 2 * half))
    ImageDraw.Draw(canvas).text((half + offset[0], half + offset[1]), digit, fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)  # fmt: skip
    if slant:
        canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, (1, slant, -slant * half, 0, 1, 0),
                                  resample=Image.Resampling.BILINEAR)  # fmt: skip
    return np.asarray(canvas)


def family_slots(per_class: int, n_families: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, family index) of ``per_class`` images of each digit: the families in turn, so that every family
    has the same number of images, and of each digit, up to one."""
    labels = np.repeat(np.arange(10), per_class)
    return labels, np.arange(len(labels)) % n_families


def render(
    fonts: Sequence[Sequence[Font]], p: RenderParams, rng: np.random.Generator
) -> tuple[data.Split, torch.Tensor]:
    """``p.per_class`` images of each digit from the font families ``fonts`` (a list of fonts per family), in
    random order, each with a font of its family, size, stroke width, slant and position drawn from ``rng``.
    Returns the split and each image's family (an index into ``fonts``)."""
    labels, family = family_slots(p.per_class, len(fonts))
    order = rng.permutation(len(labels))
    labels, family = labels[order], family[order]
    n = len(labels)
    choice = rng.random(n)
    sizes = rng.integers(p.size_px[0], p.size_px[1], n, endpoint=True)
    strokes = np.rint(rng.uniform(*p.stroke, n) * sizes).astype(int)
    slants = rng.uniform(*p.slant, n)
    offsets = rng.uniform(-p.position, p.position, (n, 2)) * sizes[:, None]
    loaded: dict[tuple[Path, int], ImageFont.FreeTypeFont] = {}
    images = np.empty((n, imageprep.SIDE, imageprep.SIDE), np.uint8)
    for i in range(n):
        options = fonts[family[i]]
        font = options[int(choice[i] * len(options))]
        key = (font.path, int(sizes[i]))
        if key not in loaded:
            loaded[key] = ImageFont.truetype(str(font.path), key[1])
        grey = _draw(loaded[key], str(labels[i]), int(strokes[i]), float(slants[i]), tuple(offsets[i]))
        prepared = imageprep.prepare(grey.astype(np.float32) / 255, f"{font.name} digit {labels[i]}")
        images[i] = np.rint(prepared * 255).astype(np.uint8)
    return data.Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))), torch.from_numpy(family)


def save(path: str | Path, split: data.Split, family: torch.Tensor, families: Sequence[str]) -> None:
    """One part as ``{images, labels, family, families}``: uint8 [N, 28, 28], int64 [N], int64 [N] indexing the
    family names ``families``."""
    files.write_torch(path, {"images": split.images.contiguous(), "labels": split.labels.contiguous(),
                             "family": family.contiguous(), "families": list(families)})  # fmt: skip


def content_md5(split: data.Split) -> str:
    """MD5 of the images' bytes followed by the labels' bytes."""
    return files.md5_bytes(split.images.numpy().tobytes() + split.labels.numpy().tobytes())


def load(path: str | Path) -> tuple[data.Split, list[str], torch.Tensor]:
    """A part written by the render stage: (images and labels, family names, each image's family index)."""
    keys = ("images", "labels", "family", "families")
    images, labels, family, families = data.read_stage_output(path, keys, "render", "font digits")
    tensors = all(isinstance(t, torch.Tensor) for t in (images, labels, family))
    if not (
        tensors
        and images.dtype == torch.uint8
        and tuple(images.shape[1:]) == (imageprep.SIDE, imageprep.SIDE)
        and labels.dtype == family.dtype == torch.int64
        and len(images) == len(labels) == len(family)
        and isinstance(families, list)
        and all(isinstance(name, str) for name in families)
        and bool(((family >= 0) & (family < len(families))).all())
    ):
        raise data.DataError(f"{path}: unexpected contents; re-run the render stage (dvc repro -f render)")
    return data.Split(images, labels), families, family


def accuracy_by_family(
    pred: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, family: torch.Tensor | np.ndarray,
    families: Sequence[str],
) -> dict[str, dict[str, float | int | None]]:  # fmt: skip
    """``{family: {"images", "errors", "accuracy"}}`` in the order of ``families`` (accuracy None without
    images)."""
    correct, family = np.asarray(pred) == np.asarray(labels), np.asarray(family)
    out = {}
    for i, name in enumerate(families):
        hits = correct[family == i]
        out[name] = {"images": len(hits), "errors": int((~hits).sum()),
                     "accuracy": float(hits.mean()) if len(hits) else None}  # fmt: skip
    return out
