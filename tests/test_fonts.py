"""The render stage's font digits: deterministic, balanced, prepared like MNIST, the font checks, params errors, and
the stage script as a process."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from test_stages import stage, write_params

from digits import figures, files, fonts, imageprep, params
from digits.params import ParamsError

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
TINY = 2  # images of each digit in each part


@pytest.fixture(scope="module")
def p() -> params.RenderParams:
    return params.validate(BASE).render.model_copy(update={"per_class": TINY})


@pytest.fixture(scope="module")
def found(p: params.RenderParams) -> fonts.Found:
    return fonts.find([*p.selection, *p.heldout])


def render(p: params.RenderParams, found: fonts.Found, part: str, seed: int = 0):
    names = [n for n in getattr(p, part) if n in found.fonts]
    return fonts.render([found.fonts[n] for n in names], p, np.random.default_rng(seed)), names


def test_render_is_deterministic_and_balanced(p, found):
    (split, family), names = render(p, found, "heldout")
    (again, family_again), _ = render(p, found, "heldout")
    assert split.images.numpy().tobytes() == again.images.numpy().tobytes()
    assert torch.equal(split.labels, again.labels) and torch.equal(family, family_again)
    assert fonts.content_md5(split) == fonts.content_md5(again)
    (other, _), _ = render(p, found, "heldout", seed=1)
    assert fonts.content_md5(other) != fonts.content_md5(split)
    assert split.labels.bincount(minlength=10).tolist() == [TINY] * 10
    per_family = family.bincount(minlength=len(names))
    assert len(per_family) == len(names) and per_family.max() - per_family.min() <= 1


def test_family_slots_balance_classes_exactly_and_families_within_one():
    labels, family = fonts.family_slots(per_class=7, n_families=5)
    assert np.bincount(labels).tolist() == [7] * 10
    counts = np.bincount(family, minlength=5)
    assert counts.sum() == 70 and counts.max() - counts.min() <= 1
    for digit in range(10):  # every digit spread over the families too
        per_digit = np.bincount(family[labels == digit], minlength=5)
        assert per_digit.max() - per_digit.min() <= 1


def test_every_image_is_prepared_like_mnist(p, found):
    for part in fonts.PARTS:
        (split, _), _ = render(p, found, part)
        x = split.images.numpy()
        assert x.dtype == np.uint8 and x.shape == (10 * TINY, 28, 28)
        for image in x.astype(np.float32):
            rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == imageprep.BOX  # the longest side: 20 px
            cy, cx = imageprep.centre_of_mass(image)
            off = max(abs(cy - 14), abs(cx - 14))
            # the centre of mass on the centre, unless the 20 px patch had to stay inside the frame
            touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == 27 or cols[-1] == 27
            assert off <= (1.5 if touches else 0.55), (part, off)


def make_font(path: Path, outline: str) -> Path:
    """A TrueType font with glyphs named zero..nine at 0–9: ``blank`` (no contours) or ``tofu`` (one box)."""
    names = [".notdef", *fonts.DIGIT_NAMES]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({ord(str(d)): name for d, name in enumerate(fonts.DIGIT_NAMES)})
    glyphs = {}
    for name in names:
        pen = TTGlyphPen(None)
        if outline == "tofu":
            for point in ((100, 0), (100, 700), (500, 700), (500, 0)):
                (pen.lineTo if point != (100, 0) else pen.moveTo)(point)
            pen.closePath()
        glyphs[name] = pen.glyph()
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (600, 100) for name in names})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": outline, "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.save(str(path))
    return path


def test_fonts_without_digit_glyphs_are_skipped(tmp_path: Path):
    ttf = fonts.font_dirs()[fonts.MATPLOTLIB]
    assert fonts.digit_problem(ttf / "DejaVuSans.ttf") is None
    assert fonts.digit_problem(ttf / "cmr10.ttf") is None
    assert fonts.digit_problem(ttf / "cmsy10.ttf").startswith("its glyphs at 0–9 are no digits (prime, infinity")
    assert fonts.digit_problem(ttf / "STIXSizOneSymReg.ttf") == "no glyph for 0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    assert fonts.digit_problem(ttf / "LastResortHE-Regular.ttf").startswith("its glyphs at 0–9 are no digits")
    assert fonts.digit_problem(make_font(tmp_path / "blank.ttf", "blank")).startswith("blank glyph for 0, 1")
    assert fonts.digit_problem(make_font(tmp_path / "tofu.ttf", "tofu")) == "the same glyph for different digits (tofu)"
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    assert fonts.digit_problem(tmp_path / "broken.ttf").startswith("unreadable (")

    found = fonts.find(["Computer Modern", "STIX"])
    assert [f.name for f in found.fonts["Computer Modern"]] == ["cmb10.ttf", "cmmi10.ttf", "cmr10.ttf", "cmss10.ttf",
                                                                 "cmti10.ttf", "cmtt10.ttf"]  # fmt: skip
    assert [f.name for f in found.fonts["STIX"]] == ["STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf",
                                                     "STIXGeneralItalic.ttf"]  # fmt: skip
    assert {"matplotlib:cmsy10.ttf", "matplotlib:cmex10.ttf", "matplotlib:STIXNonUni.ttf"} <= set(found.skipped)
    assert not found.missing


def test_a_family_whose_package_is_absent_is_left_out(tmp_path: Path):
    dirs = {**fonts.font_dirs(), "debian": tmp_path}  # a machine without the Debian font packages
    found = fonts.find(["DejaVu Sans", "Comic Neue"], dirs)
    assert list(found.fonts) == ["DejaVu Sans"] and len(found.fonts["DejaVu Sans"]) == 4
    assert found.missing == {"Comic Neue": f"fonts-comic-neue is not installed (no opentype/comic-neue/*.otf in "
                                           f"{tmp_path})"}  # fmt: skip


def test_every_debian_source_is_in_the_font_package_list_setup_installs():
    listed = (REPO / "scripts" / "font-packages.txt").read_text().split()
    assert sorted(listed) == sorted({f.source for f in fonts.FAMILIES.values() if f.source != fonts.MATPLOTLIB})
    for script in ("scripts/dev.sh", ".ci/run"):
        assert "scripts/font-packages.txt" in (REPO / script).read_text(), script
    kinds = {part: {fonts.FAMILIES[n].kind for n in BASE["render"][part]} for part in fonts.PARTS}
    assert kinds == {"selection": {"typeset", "handwriting"}, "heldout": {"typeset", "handwriting"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"heldout": ["DejaVu Serif", "DejaVu Sans"]}, "'render': families in both selection and heldout: DejaVu Sans"),
        ({"selection": ["STIX", "STIX"]}, "'render.selection': listed more than once: STIX"),
        ({"heldout": []}, "'render.heldout' = []: List should have at least 1 item"),
        ({"slant": [0.3, -0.2]}, "'render.slant': expected [low, high] with low ≤ high, got [0.3, -0.2]"),
        ({"size_px": [4, 80]}, "'render.size_px.0' = 4: Input should be greater than or equal to 8"),
        ({"per_class": 0}, "'render.per_class' = 0: Input should be greater than or equal to 1"),
        ({"seeed": 1}, "unknown key 'render.seeed'. Did you mean 'seed'?"),
    ],
)
def test_render_params_errors(change: dict, message: str):
    raw = copy.deepcopy(BASE)
    raw["render"].update(change)
    with pytest.raises(ParamsError, match=re.escape(message)):
        params.validate(raw)


def test_an_unknown_family_is_named():
    with pytest.raises(fonts.FontError, match=re.escape("render.heldout: unknown font family 'Comic Nue' (did you "
                                                        "mean 'Comic Neue'?)")):  # fmt: skip
        fonts.check_names({"selection": ["STIX"], "heldout": ["Humor Sans", "Comic Nue"]})


def test_accuracy_by_family_and_the_errors_figure(tmp_path: Path):
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    family = torch.tensor([0, 1, 0, 1, 0, 1])
    pred = torch.tensor([0, 7, 2, 3, 9, 8])
    assert fonts.accuracy_by_family(pred, labels, family, ["A", "B", "C"]) == {
        "A": {"images": 3, "errors": 1, "accuracy": 2 / 3},
        "B": {"images": 3, "errors": 2, "accuracy": 1 / 3},
        "C": {"images": 0, "errors": 0, "accuracy": None},
    }
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    figures.font_errors(images, labels.numpy(), pred.numpy(), family.numpy(), ["A", "B"], tmp_path / "errors.png")
    figures.font_errors(images, labels.numpy(), labels.numpy(), family.numpy(), ["A", "B"], tmp_path / "none.png")
    for name in ("errors.png", "none.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_render(directory: Path, **changes) -> tuple[object, Path]:
    """The stage script as a process in the fresh directory ``directory``, TINY images of each digit per part."""
    directory.mkdir()
    config = write_params(directory / "params.yaml", render={"per_class": TINY, **changes})
    return stage("render.py", "data/fonts", params=config, tmp=directory), directory / "data" / "fonts"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    proc, out = run_render(tmp_path_factory.mktemp("render") / "first")
    assert proc.returncode == 0, proc.stderr
    assert "fonts from matplotlib " in proc.stderr and "Traceback" not in proc.stderr
    return out


@pytest.mark.slow
def test_the_stage_writes_both_parts_and_fonts_json(rendered: Path):
    record = json.loads((rendered / "fonts.json").read_text())
    assert list(record["parts"]) == ["selection", "heldout"]
    seen = {}
    for part, info in record["parts"].items():
        split, names, family = fonts.load(rendered / f"{part}.pt")
        assert names == list(info["families"]) and names == [n for n in BASE["render"][part] if n in names]
        assert info["md5"] == fonts.content_md5(split) and info["images"] == len(split) == 10 * TINY
        assert info["per_class"] == [TINY] * 10
        assert info["per_family"] == dict(zip(names, family.bincount(minlength=len(names)).tolist(), strict=True))
        seen[part] = set(names)
    assert not seen["selection"] & seen["heldout"]
    matplotlib_fonts = record["sources"]["matplotlib"]
    ttf = fonts.font_dirs()[fonts.MATPLOTLIB]
    assert matplotlib_fonts["files"]["DejaVuSans.ttf"] == files.md5_file(ttf / "DejaVuSans.ttf")
    assert "cmsy10.ttf" not in matplotlib_fonts["files"]
    assert record["left_out"]["files"]["matplotlib:cmsy10.ttf"].startswith("its glyphs at 0–9 are no digits")


@pytest.mark.slow
def test_the_stage_run_again_from_a_fresh_directory_reproduces_the_recorded_md5s(rendered: Path, tmp_path: Path):
    proc, out = run_render(tmp_path / "second")
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads((d / "fonts.json").read_text()) for d in (rendered, out))
    assert first == second
    for part in fonts.PARTS:
        assert (out / f"{part}.pt").read_bytes() == (rendered / f"{part}.pt").read_bytes()
        assert fonts.content_md5(fonts.load(out / f"{part}.pt")[0]) == first["parts"][part]["md5"]


@pytest.mark.slow
def test_the_stage_names_an_unknown_family_before_any_work(tmp_path: Path):
    proc, out = run_render(tmp_path / "bad", heldout=["DejaVu Serif", "Handwritten Nope"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: render.heldout: unknown font family 'Handwritten Nope'"), proc.stderr
    assert not out.exists()


def test_load_names_the_stage_to_run(tmp_path: Path):
    with pytest.raises(fonts.data.DataError, match=r"not found; run the render stage \(dvc repro render\)"):
        fonts.load(tmp_path / "heldout.pt")
    files.write_torch(tmp_path / "odd.pt", {"images": torch.zeros(2, 28, 28), "labels": torch.zeros(2),
                                            "family": torch.zeros(2), "families": ["A"]})  # fmt: skip
    with pytest.raises(fonts.data.DataError, match="unexpected contents"):
        fonts.load(tmp_path / "odd.pt")
