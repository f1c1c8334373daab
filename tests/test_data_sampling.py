"""Window sampling against an independent per-clip numpy implementation of the original's rules."""
import functools

import jax
import numpy as np
import pytest

from pthnet_jax.data import LEVELS, ResidentFeatures, level_lengths, sample_batch
from pthnet_jax.data.sampling import segment_bounds

DIM = 4
# Short clips, exact multiples, and lengths whose segment bounds hit .5 (17, 20, 33 for 16 steps).
LENGTHS = [1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 20, 24, 31, 33, 40, 48, 100, 201, 1000]


def reference_picks(num_windows, num_steps, train, rng=None):
    """The original's sampling rules, one clip at a time, in float64 numpy."""
    if num_windows < num_steps:
        return list(range(num_windows))
    seg = float(num_windows) / num_steps
    picks = []
    for i in range(num_steps):
        start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
        picks.append(int(rng.integers(start, end)) if train else start + int(seg / 2))
    return picks


def reference_segments(num_windows, num_steps):
    seg = float(num_windows) / num_steps
    return [(int(np.round(seg * i)), int(np.round(seg * (i + 1)))) for i in range(num_steps)]


def _resident(counts_by_level):
    """Windows whose first value encodes (clip, window), so picks can be read back from a batch."""
    windows, offsets, counts = {}, {}, {}
    for level, lengths in counts_by_level.items():
        counts[level] = np.array(lengths, np.int32)
        offsets[level] = np.concatenate([[0], np.cumsum(counts[level])[:-1]]).astype(np.int32)
        windows[level] = np.concatenate([np.stack([np.full(DIM, 10000 * c + w + 1.0, np.float32)
                                                   for w in range(n)]) for c, n in enumerate(lengths)])
    num_clips = len(next(iter(counts_by_level.values())))
    return ResidentFeatures(windows, offsets, counts, np.arange(num_clips, dtype=np.int32) % 3)


@functools.partial(jax.jit, static_argnames=("train", "levels", "max_len"))
def _sample(resident, indices, valid, seed, epoch, noise_std, *, train, levels=LEVELS, max_len=16):
    return sample_batch(resident, indices, valid, seed=seed, epoch=epoch, train=train, max_len=max_len,
                        noise_std=noise_std, levels=levels)


def _picked(batch, level, row):
    values = np.asarray(batch["features"][level][row, :, 0])
    mask = np.asarray(batch["masks"][level][row])
    return [int(round(v)) - 10000 * int(batch["index"][row]) - 1 for v in values[mask]]


@pytest.mark.parametrize("num_steps", [4, 8, 16, 32, 6, 12, 20, 24])
def test_segment_bounds_equal_numpy_float64(num_steps):
    counts = np.arange(num_steps, 3000)
    start, end = jax.jit(lambda n: segment_bounds(n[:, None], num_steps, np.arange(num_steps)[None]))(counts)
    seg = counts.astype(np.float64)[:, None] / num_steps
    steps = np.arange(num_steps)[None]
    np.testing.assert_array_equal(start, np.round(seg * steps).astype(int))
    np.testing.assert_array_equal(end, np.round(seg * (steps + 1)).astype(int))


def test_eval_sampling_matches_reference_exactly():
    resident = _resident({lvl: LENGTHS for lvl in LEVELS})
    n = len(LENGTHS)
    batch = _sample(resident, np.arange(n), np.ones(n, bool), 0, 0, 0.0, train=False)
    for level, steps in level_lengths(16).items():
        for clip, count in enumerate(LENGTHS):
            assert _picked(batch, level, clip) == reference_picks(count, steps, False), (level, count)
            mask = np.asarray(batch["masks"][level][clip])
            np.testing.assert_array_equal(mask, np.arange(steps) < min(count, steps))
            features = np.asarray(batch["features"][level][clip])
            assert (features[~mask] == 0).all()  # zero padding, no noise in evaluation
    np.testing.assert_array_equal(batch["labels"], resident.labels)


@pytest.mark.slow  # trains or compiles a model: outside the quick check
def test_train_sampling_follows_the_segments_uniformly():
    lengths = [3, 16, 17, 20, 33, 100]
    resident = _resident({"H": lengths})
    n, epochs = len(lengths), 400
    picks = np.zeros((epochs, n, 16), int)
    for epoch in range(epochs):
        batch = _sample(resident, np.arange(n), np.ones(n, bool), 3, epoch, 0.0, train=True, levels=("H",))
        for clip in range(n):
            row = _picked(batch, "H", clip)
            picks[epoch, clip, :len(row)] = row
    assert (picks[:, 0, :3] == [0, 1, 2]).all()  # fewer windows than steps: all of them, in order
    assert (picks[:, 1] == np.arange(16)).all()  # exactly one window per segment
    for clip, count in enumerate(lengths[2:], 2):
        for step, (start, end) in enumerate(reference_segments(count, 16)):
            seen = picks[:, clip, step]
            assert start <= seen.min() and seen.max() < end, (count, step)
            width = end - start
            if width > 1:  # every window of the segment, about equally often (chi-square, p ~ 1e-4)
                observed = np.bincount(seen - start, minlength=width)
                expected = epochs / width
                chi2 = ((observed - expected) ** 2 / expected).sum()
                assert chi2 < {2: 15.1, 3: 18.4, 4: 21.1, 5: 23.5, 6: 25.7, 7: 27.9}[width], (count, step, observed)


def test_random_choices_depend_only_on_seed_epoch_clip_and_level():
    resident = _resident({lvl: [3, 40, 27, 9] for lvl in LEVELS})
    valid = np.ones(4, bool)

    def run(indices, seed=1, epoch=0):
        return jax.device_get(_sample(resident, np.array(indices), valid, seed, epoch, 0.0005, train=True))

    a, b = run([0, 1, 2, 3]), run([0, 1, 2, 3])
    swapped = run([2, 3, 1, 0])
    for level in LEVELS:
        np.testing.assert_array_equal(a["features"][level], b["features"][level])
        # The same clip gets the same windows and noise wherever it sits in a batch.
        np.testing.assert_array_equal(swapped["features"][level][[3, 2, 0, 1]], a["features"][level])
    for other in (run([0, 1, 2, 3], epoch=1), run([0, 1, 2, 3], seed=2)):
        for level in LEVELS:
            assert not np.array_equal(other["features"][level], a["features"][level])
    # Levels draw independent noise.
    assert not np.allclose(a["features"]["H"][0, 3:4] - a["features"]["M"][0, 3:4], 0)


def test_training_noise_covers_the_padding():
    resident = _resident({"H": [3, 40]})
    batch = jax.device_get(_sample(resident, np.array([0, 1]), np.ones(2, bool), 1, 0, 0.0005, train=True,
                                   levels=("H",)))
    padding = batch["features"]["H"][0, 3:]
    assert 0.0004 < padding.std() < 0.0006 and abs(padding.mean()) < 1e-4
    clean = jax.device_get(_sample(resident, np.array([0, 1]), np.ones(2, bool), 1, 0, 0.0, train=True,
                                   levels=("H",)))
    noise = batch["features"]["H"] - clean["features"]["H"]
    assert 0.0004 < noise.std() < 0.0006  # the same picks, plus noise everywhere
    np.testing.assert_array_equal(clean["features"]["H"][0, 3:], 0)


def test_invalid_rows_are_masked_out():
    resident = _resident({"H": [5, 30, 2]})
    batch = _sample(resident, np.array([1, 0, 0]), np.array([True, True, False]), 0, 0, 0.0, train=False,
                    levels=("H",))
    assert not np.asarray(batch["masks"]["H"][2]).any() and int(batch["labels"][2]) == 0
    assert not np.asarray(batch["features"]["H"][2]).any()


def test_sample_batch_runs_inside_scan_with_traced_seed_and_epoch():
    resident = jax.device_put(_resident({lvl: LENGTHS[:8] for lvl in LEVELS}))
    plan = np.arange(8, dtype=np.int32).reshape(2, 4)

    @jax.jit
    def epoch_sums(resident, plan, seed, epoch):
        def body(carry, indices):
            batch = sample_batch(resident, indices, np.ones(4, bool), seed=seed, epoch=epoch, train=True)
            return carry + batch["features"]["H"].sum(), batch["masks"]["L"].sum()
        return jax.lax.scan(body, 0.0, plan)

    total, masked = epoch_sums(resident, plan, np.int32(0), np.int32(5))
    expected = _sample(resident, np.arange(8), np.ones(8, bool), 0, 5, 0.0005, train=True)
    np.testing.assert_allclose(total, expected["features"]["H"].sum(), rtol=1e-4)
    assert int(masked.sum()) == int(np.asarray(expected["masks"]["L"]).sum())
