"""The training augmentations (loader.augment_image): each output is what the mode promises, checked against numpy's own
flips, turns and padding on random images; draws are reproducible from the generator alone."""
import random

import numpy as np
import pytest
from PIL import Image

from iqa_vlm.loader import AUGMENTS, augment_image, shift_image


def dihedral(x):
    """The 8 flips/rotations of an HxWxC array."""
    out = []
    for k in range(4):
        r = np.rot90(x, k)
        out += [r, r[:, ::-1]]
    return out


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_flip_rot_gives_each_of_the_eight_transforms():
    x = random_image(6, 6)
    views = dihedral(x)
    seen = set()
    rng = random.Random(0)
    for _ in range(400):
        y = np.asarray(augment_image(Image.fromarray(x), "flip_rot", rng))
        matches = [i for i, v in enumerate(views) if np.array_equal(y, v)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


@pytest.mark.parametrize("h,w", [(32, 32), (13, 7), (1, 1), (2, 9)])
def test_shift_is_a_window_of_the_mirrored_image(h, w):
    x = random_image(h, w, seed=h * w)
    m = max(1, min(h, w) // 8)
    padded = np.pad(x, ((m, m), (m, m), (0, 0)), mode="reflect")
    windows = {(dy, dx): padded[dy:dy + h, dx:dx + w] for dy in range(2 * m + 1) for dx in range(2 * m + 1)}
    seen = set()
    rng = random.Random(1)
    for _ in range(1500):  # 81 offsets at 32 px: each missed with probability (80/81)^1500 < 1e-8
        y = np.asarray(shift_image(Image.fromarray(x), rng))
        assert y.shape == x.shape and y.dtype == np.uint8
        hits = [k for k, v in windows.items() if np.array_equal(y, v)]
        assert hits, "not a window of the reflect-padded image"
        seen.update(hits)
    if h * w > 4:  # every offset in [-m, m]^2 is drawn (the 1-pixel images make all windows equal)
        assert seen == set(windows)
    # pixels inside the image move without change: the centre window is the image itself
    assert np.array_equal(windows[(m, m)], x)


def test_shift_on_a_32px_crop_moves_at_most_4_pixels():
    # each pixel holds its own row (red) and column (green): the shift is read back from the centre pixel
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    x = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    rng = random.Random(2)
    moves = set()
    for _ in range(1500):
        y = np.asarray(shift_image(Image.fromarray(x), rng))
        sy, sx = int(y[16, 16, 0]), int(y[16, 16, 1])  # an interior pixel: no mirroring reaches it
        moves.add((sy - 16, sx - 16))
    assert moves == {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)}


def test_flip_rot_shift_is_reproducible_and_keeps_the_pixels_statistics():
    x = random_image(32, 32, seed=3)
    a = [np.asarray(augment_image(Image.fromarray(x), "flip_rot_shift", random.Random(f"k:{i}"))) for i in range(20)]
    b = [np.asarray(augment_image(Image.fromarray(x), "flip_rot_shift", random.Random(f"k:{i}"))) for i in range(20)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert len({v.tobytes() for v in a}) > 10
    for y in a:  # a border of mirrored pixels: the values all come from the image
        assert set(np.unique(y)) <= set(np.unique(x))


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="flip_rot_shift"):
        augment_image(Image.fromarray(random_image(4, 4)), "rotate", random.Random(0))
    assert AUGMENTS[0] == "none"
