"""The MNIST-C corruptions (digits.corruptions) on a few drawn digits: shape, range and seeding of every
corruption, a cheap sanity check of each, the benchmark's rows and examples, and its separation from the
training augmentations."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from digits import corruptions
from digits.corruptions import CORRUPTIONS, corrupt, evaluate, examples

SRC = Path(__file__).resolve().parents[1] / "src" / "digits"
UNSEEDED = {"scale", "brightness", "stripe", "canny_edges"}  # no randomness: the same for every seed
ROWS, COLS = torch.arange(28.0)[:, None], torch.arange(28.0)[None, :]


def strokes(*segments: tuple[float, float, float, float], half_width: float = 1.2) -> torch.Tensor:
    """[28, 28] bright strokes on black, each from (row, col) to (row, col), soft-edged like MNIST's ink."""
    image = torch.zeros(28, 28)
    for r0, c0, r1, c1 in segments:
        dr, dc = r1 - r0, c1 - c0
        t = (((ROWS - r0) * dr + (COLS - c0) * dc) / (dr**2 + dc**2)).clamp(0, 1)
        distance = torch.hypot(ROWS - (r0 + t * dr), COLS - (c0 + t * dc))
        image = torch.maximum(image, (half_width + 0.5 - distance).clamp(0, 1))
    return image


def ring(rows: float, cols: float, half_width: float = 1.2) -> torch.Tensor:
    """[28, 28] an ellipse of radii ``rows`` × ``cols`` around the centre: a zero."""
    radius = torch.hypot((ROWS - 13.5) / rows, (COLS - 13.5) / cols)
    return (half_width + 0.5 - (radius - 1).abs() * min(rows, cols)).clamp(0, 1)


ONE = strokes((5, 14, 22, 13))  # a vertical stroke
DIGITS = torch.stack(
    [
        ONE,
        strokes((6, 8, 6, 20), (6, 20, 22, 12)),  # 7
        strokes((5, 9, 15, 9), (15, 9, 15, 21), (5, 18, 22, 18)),  # 4
        ring(8, 6),  # 0
        strokes((6, 9, 6, 19), (6, 19, 14, 19), (14, 19, 14, 9), (14, 9, 22, 9), (22, 9, 22, 19)),  # 2
    ]
)[:, None]


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """[N, 2] (row, column) centres of the ink of images [N, 1, 28, 28]."""
    total = x.sum(dim=(1, 2, 3))
    return torch.stack([(x * ROWS).sum(dim=(1, 2, 3)) / total, (x * COLS).sum(dim=(1, 2, 3)) / total], 1)


def test_the_fifteen_corruptions_in_mnist_c_order():
    assert CORRUPTIONS == ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
                           "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag",
                           "canny_edges")  # fmt: skip


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_keeps_shape_dtype_and_range_is_seeded_and_changes_every_image(name):
    for batch in (DIGITS[:1], DIGITS, DIGITS.double()):
        out = corrupt(batch, name, seed=3)
        assert out.shape == batch.shape and out.dtype == batch.dtype and out.device == batch.device
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, corrupt(batch, name, seed=3))  # bit for bit
        assert ((out - batch).abs().amax(dim=(1, 2, 3)) > 0).all()
    other = corrupt(DIGITS, name, seed=4)
    assert torch.equal(other, corrupt(DIGITS, name, seed=3)) == (name in UNSEEDED)


@pytest.mark.parametrize("name", sorted(UNSEEDED))
def test_an_unseeded_corruption_treats_each_image_on_its_own(name):
    alone = torch.cat([corrupt(image[None], name, seed=0) for image in DIGITS])
    assert torch.allclose(corrupt(DIGITS, name, seed=0), alone, atol=1e-6)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_batch_larger_than_a_chunk_is_corrupted_chunk_by_chunk(name, monkeypatch):
    monkeypatch.setattr(corruptions, "CHUNK", 2)  # five images: chunks of 2, 2 and 1
    out = corrupt(DIGITS, name, seed=3)
    assert out.shape == DIGITS.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, corrupt(DIGITS, name, seed=3))
    if name in UNSEEDED:
        monkeypatch.undo()
        assert torch.allclose(out, corrupt(DIGITS, name, seed=3), atol=1e-6)


def test_unknown_corruption_and_wrong_shape_are_errors_naming_what_is_valid():
    with pytest.raises(ValueError, match="unknown corruption 'snow'.*shot_noise.*canny_edges"):
        corrupt(DIGITS, "snow", seed=0)
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        corrupt(DIGITS[:, 0], "rotate", seed=0)


def test_shot_noise_draws_poisson_photon_counts_of_three_at_full_ink():
    grey = torch.full((8, 1, 28, 28), 0.5)  # 1.5 photons expected
    out = corrupt(grey, "shot_noise", seed=0)
    fractions = [(out == k / 3).double().mean().item() for k in range(4)]
    poisson = [math.exp(-1.5) * 1.5**k / math.factorial(k) for k in range(3)]
    assert fractions == pytest.approx([*poisson, 1 - sum(poisson)], abs=0.02)  # ≥ 3 photons: full ink
    assert (corrupt(DIGITS, "shot_noise", seed=0)[DIGITS == 0] == 0).all()  # no light, no photons


def test_impulse_noise_sets_about_17_percent_of_pixels_to_black_or_white():
    out = corrupt(DIGITS, "impulse_noise", seed=0)
    changed = out != DIGITS
    assert ((out[changed] == 0) | (out[changed] == 1)).all()
    background = DIGITS == 0
    assert (out[background] == 1).double().mean().item() == pytest.approx(0.17 / 2, abs=0.02)


def test_glass_blur_spreads_the_ink_and_keeps_its_amount():
    out = corrupt(DIGITS, "glass_blur", seed=0)
    assert out.sum(dim=(1, 2, 3)) / DIGITS.sum(dim=(1, 2, 3)) == pytest.approx(torch.ones(len(DIGITS)), abs=0.03)
    assert ((out > 0.05).sum(dim=(1, 2, 3)) > (DIGITS > 0.05).sum(dim=(1, 2, 3))).all()


def test_motion_blur_smears_the_ink_to_one_side_and_keeps_its_amount():
    out = corrupt(DIGITS, "motion_blur", seed=0)
    assert out.sum(dim=(1, 2, 3)) / DIGITS.sum(dim=(1, 2, 3)) == pytest.approx(torch.ones(len(DIGITS)), abs=0.01)
    shift = centre_of_mass(out)[:, 1] - centre_of_mass(DIGITS)[:, 1]
    assert ((shift < -1) & (shift > -3)).all()  # a streak of mean length ≈ 2.4 px, within ±45° of leftward


@pytest.mark.parametrize("name", ["shear", "rotate"])
def test_shear_and_rotate_tilt_a_vertical_stroke_about_the_centre(name):
    out = corrupt(ONE[None, None], name, seed=0)
    top, bottom = centre_of_mass(out * (ROWS < 14)), centre_of_mass(out * (ROWS >= 14))
    assert abs(top[0, 1] - bottom[0, 1]) > 2.5
    assert centre_of_mass(out)[0] == pytest.approx(centre_of_mass(ONE[None, None])[0], abs=0.5)


def test_scale_shrinks_the_digit_to_seven_tenths_about_the_centre():
    out = corrupt(DIGITS, "scale", seed=0)

    def spread(x: torch.Tensor) -> torch.Tensor:
        squared_radius = (ROWS - 13.5) ** 2 + (COLS - 13.5) ** 2  # from the image centre
        return ((x * squared_radius).sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))).sqrt()

    assert spread(out) / spread(DIGITS) == pytest.approx(torch.full((len(DIGITS),), 0.7), abs=0.03)


def test_brightness_adds_a_half_and_clips():
    out = corrupt(DIGITS, "brightness", seed=0)
    assert torch.equal(out, (DIGITS + 0.5).clamp(max=1))
    assert out.mean() > DIGITS.mean() + 0.4


def test_translate_moves_every_digit_three_pixels_diagonally_in_random_directions():
    many = DIGITS.repeat(4, 1, 1, 1)
    shift = centre_of_mass(corrupt(many, "translate", seed=0)) - centre_of_mass(many)
    assert shift.abs() == pytest.approx(torch.full_like(shift, 3.0), abs=1e-3)
    assert len({tuple(s) for s in shift.sign().tolist()}) > 1


def test_stripe_inverts_the_seven_outer_columns_on_each_side():
    out = corrupt(DIGITS, "stripe", seed=0)
    assert torch.equal(out[..., :7], 1 - DIGITS[..., :7]) and torch.equal(out[..., 21:], 1 - DIGITS[..., 21:])
    assert torch.equal(out[..., 7:21], DIGITS[..., 7:21])


def test_fog_adds_an_uneven_haze_and_dims_the_digit():
    out = corrupt(DIGITS, "fog", seed=0)
    haze = out - DIGITS / 4  # peak ink 1: the digit keeps 1/4, the haze is 3/4 of the plasma map
    assert haze.min() >= -1e-6 and haze.max() <= 0.75 + 1e-6
    assert (haze.std(dim=(1, 2, 3)) > 0.01).all()
    assert not torch.equal(haze[0], haze[1])


def test_spatter_blends_blotches_toward_mud_grey():
    out = corrupt(DIGITS, "spatter", seed=0)
    mud = 63 / 255
    assert ((out - mud).abs() <= (DIGITS - mud).abs() + 1e-6).all()
    assert ((out != DIGITS).sum(dim=(1, 2, 3)) > 5).all()


def test_dotted_line_adds_ink_only_in_its_dashes():
    out = corrupt(DIGITS, "dotted_line", seed=0)
    added = (out - DIGITS).amax(dim=(0, 1, 2))  # per column
    cols = torch.arange(28)
    dashes = (cols // 2 % 2 == 1) & (cols < 27)
    assert (out >= DIGITS).all() and (added[~dashes] == 0).all()
    assert ((out - DIGITS).sum(dim=(1, 2, 3)) > 5).all()  # every image gets its line


def test_zigzag_adds_ink_between_columns_2_and_26():
    out = corrupt(DIGITS, "zigzag", seed=0)
    added = out - DIGITS
    assert (added >= 0).all() and (added[..., :2] == 0).all() and (added[..., 27:] == 0).all()
    assert (added.sum(dim=(1, 2, 3)) > 5).all()


def test_canny_edges_are_binary_thin_outlines_next_to_the_ink():
    out = corrupt(DIGITS, "canny_edges", seed=0)
    assert ((out == 0) | (out == 1)).all()
    assert (out.sum(dim=(1, 2, 3)) > 10).all()
    assert out[..., 0, :].sum() == out[..., -1, :].sum() == out[..., 0].sum() == out[..., -1].sum() == 0
    near_ink = torch.nn.functional.max_pool2d((DIGITS > 0.1).float(), 5, stride=1, padding=2)
    assert (out <= near_ink).all()


def test_evaluate_gives_one_row_per_corruption_seeded_in_order():
    labels = torch.tensor([1, 7, 4, 0, 2])
    seen = []

    def predict(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return torch.zeros(len(images), dtype=torch.long)

    rows = evaluate(predict, DIGITS, labels, seed=10)
    assert [r["corruption"] for r in rows] == list(CORRUPTIONS)
    assert all(r["accuracy"] == pytest.approx(0.2) for r in rows)  # only the zero
    for i, name in enumerate(CORRUPTIONS):
        assert torch.equal(seen[i], corrupt(DIGITS, name, seed=10 + i))


def test_examples_show_one_image_under_every_corruption_seeded_as_evaluate():
    shown = examples(DIGITS[1], seed=10)
    assert [name for name, _ in shown] == list(CORRUPTIONS)
    for i, (name, image) in enumerate(shown):
        assert image.shape == (28, 28) and torch.equal(image, corrupt(DIGITS[1:2], name, seed=10 + i)[0, 0])


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, ``from digits import data`` counting as ``digits.data``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_benchmark_and_the_training_augmentations_share_no_code():
    assert not imported_modules(SRC / "corruptions.py") & {"digits.data", "digits.robustness"}
    for trainer in ("data.py", "training.py"):
        assert "digits.corruptions" not in imported_modules(SRC / trainer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_every_corruption_runs_on_the_gpu_seeded_and_in_range():
    x = DIGITS.cuda()
    for name in CORRUPTIONS:
        out = corrupt(x, name, seed=3)
        assert out.device == x.device and out.dtype == x.dtype and out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1 and torch.equal(out, corrupt(x, name, seed=3))


def test_summary_means_and_the_mean_over_corruptions_unlike_any_augmentation():
    rows = [{"corruption": name, "accuracy": 0.5 if name in corruptions.COUNTERPARTS else 1.0} for name in CORRUPTIONS]
    summary = corruptions.summary(rows)
    assert summary["corruption"] == {r["corruption"]: r["accuracy"] for r in rows}
    assert summary["corruption_mean_unseen"] == 1.0
    assert summary["corruption_mean"] == pytest.approx((13 * 0.5 + 2) / 15)
    assert set(corruptions.COUNTERPARTS) < set(CORRUPTIONS)
    assert set(CORRUPTIONS) - set(corruptions.COUNTERPARTS) == {"stripe", "spatter"}
