"""The per-sample training augmentations (digits.augmentations) as train.augment params: each is the identity at 0,
seeded, in range and in frame; only the default recipe uses them, each image of its robust share two of them."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from digits import augmentations, data, params, training
from digits.params import AugmentParams, ParamsError, TrainParams

REPO = Path(__file__).resolve().parents[1]
NEW = list(augmentations.TRANSFORMS)
MAXIMUM = {"thickness": 1.0, "outline": 1.0, "lowres": 0.75, "blur": 5.0, "erasing": 1.0, "scribble": 1.0,
           "shading": 4.0, "contrast": 1.0, "noise": 1.0}  # fmt: skip
TYPICAL = {"thickness": 1.0, "outline": 0.5, "lowres": 0.75, "blur": 2.0, "erasing": 0.5, "scribble": 0.5,
           "shading": 2.0, "contrast": 1.0, "noise": 0.3}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digits(n: int = 32, seed: int = 0) -> torch.Tensor:
    """Digit-like images: an anti-aliased ring of random size and stroke width near the centre, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low, span = torch.tensor([12.5, 5, 1]).view(3, 1, 1, 1), torch.tensor([3, 3.5, 1.5]).view(3, 1, 1, 1)
    centre, radius, width = low + torch.rand(3, n, 1, 1, generator=g) * span
    d = torch.arange(28.0)
    dist = ((d.view(-1, 1) - centre) ** 2 + ((d - centre) / 0.7) ** 2).sqrt()
    return (width + 1 - (dist - radius).abs()).clamp(0, 1).unsqueeze(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """Per image, the centre of mass above the image's darkest pixel (a lifted background weighs nothing)."""
    x = x - x.amin((1, 2, 3), keepdim=True)
    d = torch.arange(28.0)
    mass = x.sum((1, 2, 3))
    return torch.stack([(x.sum((1, 3)) * d).sum(1) / mass, (x.sum((1, 2)) * d).sum(1) / mass], 1)


@pytest.mark.parametrize("name", NEW)
def test_zero_is_the_identity_and_draws_nothing(name: str):
    x, g = digits(), gen()
    state = g.get_state()
    assert augmentations.TRANSFORMS[name](x, 0.0, g) is x
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("name", NEW)
def test_seeded_in_range_and_keeps_shape_dtype_device(name: str):
    x = digits()
    before = x.clone()
    out = augmentations.TRANSFORMS[name](x, TYPICAL[name], gen(1))
    assert torch.equal(x, before)  # the input is not modified in place
    assert (out.shape, out.dtype, out.device) == (x.shape, x.dtype, x.device)
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    assert torch.equal(out, augmentations.TRANSFORMS[name](x, TYPICAL[name], gen(1)))
    assert not torch.equal(out, augmentations.TRANSFORMS[name](x, TYPICAL[name], gen(2)))
    at_most = augmentations.TRANSFORMS[name](x, MAXIMUM[name], gen(1))
    assert at_most.min() >= 0 and at_most.max() <= 1


@pytest.mark.parametrize("name", [n for n in NEW if n not in ("erasing", "scribble", "shading")])  # these add or
# remove ink or light off the digit: they may move the mass
def test_the_digit_stays_where_it_was(name: str):
    x = digits()
    before, after = centre_of_mass(x), centre_of_mass(augmentations.TRANSFORMS[name](x, TYPICAL[name], gen()))
    if name == "noise":  # clamped at 0, noise lifts the background evenly: it can only pull towards the image centre
        centre = torch.tensor([13.5, 13.5])
        assert ((after - centre).norm(dim=1) <= (before - centre).norm(dim=1) + 0.05).all()
    else:  # an outline's ink lies a pixel outside the stroke, so it may weigh the outer edge of a curve more
        assert (after - before).norm(dim=1).max() < (0.5 if name == "outline" else 0.25)


def test_thickness_thickens_some_strokes_and_thins_others():
    x = digits(64)
    change = augmentations.thickness(x, 1.0, gen()).sum((1, 2, 3)) - x.sum((1, 2, 3))
    assert (change > 0).sum() > 10 and (change < 0).sum() > 10
    out = augmentations.thickness(x, 1.0, gen())
    dilated, eroded = F.max_pool2d(x, 3, stride=1, padding=1), -F.max_pool2d(-x, 3, stride=1, padding=1)
    assert torch.equal(augmentations._max3(x), dilated)
    thicker = ((x <= out) & (out <= dilated)).all(dim=(1, 2, 3))  # each image between itself and its dilation
    thinner = ((eroded <= out) & (out <= x)).all(dim=(1, 2, 3))  # or between its erosion and itself
    assert (thicker | thinner).all()


def test_blur_keeps_the_ink_and_spreads_it_per_sample():
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 14, 14] = 1
    out = augmentations.blur(x, 3.0, gen())
    torch.testing.assert_close(out.sum((1, 2, 3)), torch.ones(64), atol=1e-5, rtol=0)  # normalised, no truncation
    assert torch.allclose(out, out.flip(-1).roll(1, -1)) and torch.allclose(out, out.transpose(-1, -2))  # symmetric
    peak = out[:, 0, 14, 14]
    assert peak.max() > 0.5 and peak.min() < 0.03  # σ from near 0 to near 3 px


def test_erasing_probability_one_erases_a_rectangle_in_every_image_and_zero_never():
    x = torch.rand(64, 1, 28, 28, generator=gen(5)) * 0.9 + 0.1  # no zeros before
    out = augmentations.erasing(x, 1.0, gen())
    erased = out[:, 0] == 0
    assert torch.equal(out[~erased.unsqueeze(1)], x[~erased.unsqueeze(1)])  # the rest untouched
    rows, cols = erased.any(2).sum(1), erased.any(1).sum(1)
    assert torch.equal(erased.sum((1, 2)), rows * cols)  # one filled rectangle in each image
    share = erased.sum((1, 2)) / 784
    assert share.min() >= 0.015 and share.max() <= 0.25  # 2–20 % of the image, up to rounding the sides
    assert augmentations.erasing(x, 0.0, gen()) is x
    some = (augmentations.erasing(x, 0.5, gen())[:, 0] == 0).any((1, 2))
    assert 10 < some.sum() < 54


@pytest.mark.parametrize("side", [7, 14, 28])
def test_lowres_resampling_is_area_down_and_bilinear_up(side: int):
    x = digits(4)
    matrices = augmentations._resampling(28, 7, x)[side - 7].expand(4, 28, 28)
    expected = F.interpolate(F.interpolate(x, size=(side, side), mode="area"), size=(28, 28), mode="bilinear")
    torch.testing.assert_close(augmentations._separable(x, matrices, matrices), expected, atol=1e-5, rtol=0)


def test_lowres_at_full_strength_loses_detail():
    x = torch.zeros(64, 1, 28, 28)
    x[..., 1::2, :] = 1  # stripes one pixel wide: gone below 28 px
    detail = (x.diff(dim=2) ** 2).sum((1, 2, 3))
    out = augmentations.lowres(x, 0.75, gen())
    kept = (out.diff(dim=2) ** 2).sum((1, 2, 3)) / detail
    assert kept.median() < 0.05 and (kept < 0.5).float().mean() > 0.9  # most images: a side well under 28


def test_contrast_keeps_the_background_near_zero_and_the_ink_visible():
    x = digits(64)
    out = augmentations.contrast(x, 1.0, gen())
    assert out[x == 0].max() <= 0.1 + 1e-6
    ink = out.amax((1, 2, 3))
    assert ink.min() > 1 / math.e - 1e-6 and (ink < 0.8).any() and (ink == 1).any()


def test_noise_sigma_varies_per_sample():
    x = torch.full((64, 1, 28, 28), 0.5)
    spread = (augmentations.noise(x, 0.2, gen()) - x).std((1, 2, 3))
    assert spread.min() < 0.03 and spread.max() > 0.15


def tp(**augment: float) -> TrainParams:
    return TrainParams(model="test", arch="cnn", epochs=2, batch_size=32, optimizer="adam", lr=0.01, seed=0,
                       augment=AugmentParams(rotation_deg=10, zoom=0.1, shift=0.1, **augment))  # fmt: skip


def test_augment_batch_with_the_new_keys_off_is_exactly_the_geometric_augmentation():
    x = digits()
    g_new, g_old = gen(3), gen(3)
    out = training.augment_batch(x, tp(), 1, g_new)
    assert torch.equal(out, data.augment(x, 10, 0.1, 0.1, g_old, 0.0, 4.0, "bilinear"))
    assert torch.equal(g_new.get_state(), g_old.get_state())  # the same random numbers drawn: the same next batch


def test_augment_batch_applies_them_seeded_per_sample_and_keeps_off_last_epochs():
    x, p = digits(), tp(**TYPICAL, off_last_epochs=1)
    out = training.augment_batch(x, p, 1, gen(3))
    assert torch.equal(out, training.augment_batch(x, p, 1, gen(3)))
    assert not torch.equal(out, training.augment_batch(x, tp(), 1, gen(3)))
    assert training.augment_batch(x, p, 2, gen(3)) is x
    # the labels still fit: each image's result depends on that image alone (no mixing, no reordering)
    changed = x.clone()
    changed[5] = x[6]
    again = training.augment_batch(changed, p, 1, gen(3))
    assert not torch.equal(again[5], out[5]) and torch.equal(again[:5], out[:5]) and torch.equal(again[6:], out[6:])


def test_only_the_default_recipe_uses_the_new_augmentations():
    for name in yaml.safe_load((REPO / "params.yaml").read_text())["train"]["zoo"]:
        a = params.zoo_model(name, REPO / "params.yaml").augment
        if name == "digits_cnn":  # the recipe made for robustness: every new augmentation on, on a share
            assert all(getattr(a, k) > 0 for k in NEW) and 0 < a.robust_share < 1 and a.robust_ops == 2, name
        else:
            assert {k: getattr(a, k) for k in NEW} == dict.fromkeys(NEW, 0), name
    default = params.load(REPO / "params.yaml").train.augment
    assert default == params.zoo_model("digits_cnn", REPO / "params.yaml").augment and default.elastic_px == 1.2
    clean = params.zoo_model("digits_cnn_clean", REPO / "params.yaml").augment  # the same affine augmentation
    off = dict.fromkeys(NEW, 0) | {"robust_share": 1, "robust_ops": 0, "elastic_px": 0}
    assert default.model_copy(update=off) == clean
    assert clean == AugmentParams(rotation_deg=10, zoom=0.1, shift=0.1, elastic_px=0, elastic_scale=7)


@pytest.mark.parametrize("name", NEW)
def test_each_key_is_validated_and_overridable(name: str, tmp_path: Path):
    default = params.zoo_model("digits_cnn_clean", REPO / "params.yaml")  # every one off: an override shows
    q = params.override(default, [f"augment.{name}={TYPICAL[name]}"])
    assert getattr(q.augment, name) == TYPICAL[name] and q.augment.rotation_deg == default.augment.rotation_deg
    for bad in (-0.1, MAXIMUM[name] + 0.01):
        with pytest.raises(ParamsError, match=rf"'train\.augment\.{name}' = {bad}"):
            params.override(default, [f"augment.{name}={bad}"])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())  # what `dvc exp run -S train.augment.NAME=…` writes
    raw["train"]["model"] = "digits_cnn_clean"
    raw["train"]["augment"][name] = TYPICAL[name]
    assert getattr(params.validate(copy.deepcopy(raw)).train.augment, name) == TYPICAL[name]
    raw["train"]["augment"][name] = -1
    with pytest.raises(ParamsError, match=rf"'train\.augment\.{name}' = -1: Input should be greater than or equal"):
        params.validate(raw)


def test_no_training_augmentation_uses_the_robustness_benchmark():
    """Project rule: the benchmark's corruptions stay independent of what the model trained on."""
    for module in ("augmentations", "training", "data"):
        tree = ast.parse((REPO / "src" / "digits" / f"{module}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {f"digits.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not {"digits.robustness", "digits.corruptions"} & imported, module


def test_robust_share_leaves_the_other_images_as_they_were():
    x = digits(200)
    everything = augmentations.apply(x, TYPICAL, gen(), share=1.0)
    none = augmentations.apply(x, TYPICAL, gen(), share=0.0)
    half = augmentations.apply(x, TYPICAL, gen(), share=0.5)
    assert torch.equal(none, x)
    assert not torch.equal(everything, x)
    untouched = (half == x).flatten(1).all(1)
    assert 0.35 < untouched.float().mean() < 0.65
    assert torch.equal(half, augmentations.apply(x, TYPICAL, gen(), share=0.5))
    assert augmentations.apply(x, dict.fromkeys(TYPICAL, 0.0), gen(), share=0.5) is x  # all off: nothing drawn
    # only the chosen images are computed: after the choice, they get what share 1 gives a batch of them alone
    g = gen()
    chosen = (torch.rand(len(x), generator=g) < 0.5).nonzero().squeeze(1)
    assert torch.equal(half[chosen], augmentations.apply(x[chosen], TYPICAL, g))
    assert not untouched[chosen].any()


def test_robust_ops_gives_each_image_that_many_of_the_transforms():
    x = digits(200)
    both = {**dict.fromkeys(TYPICAL, 0.0), "outline": 1.0, "scribble": 1.0}  # outline erases the ink, scribble keeps it
    one = augmentations.apply(x, both, gen(), ops=1)
    assert torch.equal(one, augmentations.apply(x, both, gen(), ops=1))  # seeded
    kept = (one >= x).flatten(1).all(1)  # scribble only: ink is only added
    erased = (one * (x > 0.9)).flatten(1).amax(1) < 0.2  # outline only (a scribble would cross the old ink)
    assert not (kept & erased).any() and (kept | erased).float().mean() > 0.9  # one or the other, never both
    assert 0.35 < kept.float().mean() < 0.65
    # as many ops as transforms switched on, or 0: every transform on every image, as before ops existed
    assert torch.equal(augmentations.apply(x, both, gen(), ops=2), augmentations.apply(x, both, gen()))
    assert torch.equal(augmentations.apply(x, TYPICAL, gen(), ops=9), augmentations.apply(x, TYPICAL, gen(), ops=0))
    # with a share, only the chosen images change, each by its own picks
    mixed = augmentations.apply(x, TYPICAL, gen(), share=0.5, ops=2)
    assert 0.35 < (mixed == x).flatten(1).all(1).float().mean() < 0.65
    clean = params.zoo_model("digits_cnn_clean", REPO / "params.yaml")
    assert clean.augment.robust_ops == 0
    assert params.override(clean, ["augment.robust_ops=2"]).augment.robust_ops == 2
    for bad in ("-1", "10", "1.5"):
        with pytest.raises(ParamsError, match=rf"'train\.augment\.robust_ops' = {bad}"):
            params.override(clean, [f"augment.robust_ops={bad}"])


@pytest.mark.parametrize(("name", "strength"), [("outline", 1.0), ("scribble", 1.0), ("shading", 4.0)])
def test_what_the_stroke_and_light_transforms_do(name: str, strength: float):
    x = digits(64)
    out = augmentations.TRANSFORMS[name](x, strength, gen())
    background = x == 0
    if name == "outline":  # probability 1: the ink gone, lines at full ink just outside it, nothing far away
        ring = (augmentations._max3(x) > 0.9) & (x < 0.1)
        assert out[x > 0.9].max() < 0.2 and out[ring].mean() > 0.9 and out[augmentations._max3(x) == 0].max() == 0
    elif name == "scribble":  # probability 1: ink is only added, to every image, some of it off the digit
        assert (out >= x).all() and ((out - x).flatten(1).amax(1) >= 0.3).all()
        assert (out[background] > 0).float().mean() > 0.02
    else:  # the background is lifted unevenly, the ink still brighter than the background around it
        lifted = out[background]
        assert lifted.min() >= 0 and lifted.std() > 0.01 and out.max() <= 1
        assert (out.flatten(1).amax(1) > out.flatten(1).median(1).values).all()
