"""The run's time breakdown: interval arithmetic, JAX compile spans per program, parts that add up."""
import time

import numpy as np
import pytest

from pthnet_jax import timing


def _covered(spans, grid):
    """Brute force: how much of `grid` (fine sample points) lies inside any span."""
    inside = np.zeros(len(grid), bool)
    for start, end in spans:
        inside |= (grid >= start) & (grid < end)
    return inside.sum() * (grid[1] - grid[0])


def test_union_and_overlap_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 10, 200_001)[:-1]
    for _ in range(20):
        starts = rng.uniform(0, 9, 6)
        spans = [(float(s), float(s + rng.uniform(0, 2))) for s in starts]
        spans = [(s, min(e, 10.0)) for s, e in spans]
        assert timing._union_length(spans) == pytest.approx(_covered(spans, grid), abs=1e-3)
        window = (2.5, 7.25)
        clipped = [(max(s, window[0]), min(e, window[1])) for s, e in spans if min(e, window[1]) > max(s, window[0])]
        assert timing._overlap(spans, window) == pytest.approx(_covered(clipped, grid), abs=1e-3)


def test_compilation_inside_a_phase_is_reported_per_program_and_not_twice():
    import jax
    import jax.numpy as jnp

    def breakdown_probe(x):
        for _ in range(30):
            x = jnp.sin(x) @ x.T + x
        return x

    clock = timing.RunClock()
    begin = time.time()
    with clock.phase("steps"):
        jax.jit(breakdown_probe)(jnp.ones((8, 8))).block_until_ready()
        time.sleep(0.2)
    clock.stop()
    elapsed = time.time() - begin
    record = clock.record()
    assert any(name.startswith("steps ") and "breakdown_probe" in name for name in record["programs"])
    assert record["compile"] > 0 and record["trace"] > 0
    # The phase's own time excludes the JAX work inside it; together they are the phase's length.
    assert record["steps"] >= 0.2
    assert record["steps"] + record["trace"] + record["lower"] + record["compile"] == pytest.approx(elapsed, abs=0.05)
    parts = sum(v for k, v in record.items() if k not in ("total", "programs", "marks"))
    assert parts == pytest.approx(record["total"], abs=0.01)
    clock.marks.clear()
    clock.mark("first_step")
    clock.mark("first_step")  # once: the second call changes nothing
    assert clock.record()["marks"]["first_step"] == pytest.approx(record.get("start", 0.0) + elapsed, abs=0.05)
    line = clock.line()
    assert line.startswith("time: ") and "steps" in line and "total" in line


def test_a_stopped_clock_ignores_later_compilations():
    import jax
    import jax.numpy as jnp

    clock = timing.RunClock()
    clock.stop()
    jax.jit(lambda x: jnp.cos(x) * 3)(jnp.ones(5)).block_until_ready()
    assert clock.record()["programs"] == {}


def test_process_start_is_in_the_past_and_only_the_first_clock_counts_it(monkeypatch):
    started = timing.process_started()
    assert started is not None and started <= time.time()
    monkeypatch.setattr(timing, "_first_clock", True)
    first, second = timing.RunClock(), timing.RunClock()
    first.stop(), second.stop()
    assert first.record()["start"] == pytest.approx(first.created - started, abs=0.02)
    assert "start" not in second.record()
