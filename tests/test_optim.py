"""The optimiser and schedule against torch.optim.SGD + MultiStepLR, step by step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from pthnet_jax.optim import make_optimizer, multistep_schedule  # noqa: E402


def test_sgd_with_coupled_weight_decay_and_multistep_matches_torch():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    inputs = rng.normal(size=(40, 5)).astype(np.float32)
    targets = rng.normal(size=(40, 3)).astype(np.float32)
    steps_per_epoch, epochs, milestones, gamma = 4, 7, (2, 3, 5), 0.3

    weight = torch.tensor(w0, requires_grad=True)
    bias = torch.tensor(b0, requires_grad=True)
    opt = torch.optim.SGD([weight, bias], lr=0.05, momentum=0.9, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)

    params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
    tx, schedule = make_optimizer(lr=0.05, momentum=0.9, weight_decay=1e-2, milestones=milestones, gamma=gamma,
                                  steps_per_epoch=steps_per_epoch)
    state = tx.init(params)
    loss_fn = lambda p, x, y: jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) - y) ** 2)  # noqa: E731

    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            x, y = inputs[step * 10:(step + 1) * 10], targets[step * 10:(step + 1) * 10]
            opt.zero_grad()
            torch.mean((torch.tanh(torch.from_numpy(x) @ weight + bias) - torch.from_numpy(y)) ** 2).backward()
            # The schedule make_optimizer returns (what training logs) is the one torch stepped with.
            np.testing.assert_allclose(float(schedule(epoch * steps_per_epoch + step)),
                                       opt.param_groups[0]["lr"], rtol=1e-6)
            opt.step()
            grads = jax.grad(loss_fn)(params, x, y)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            np.testing.assert_allclose(params["w"], weight.detach().numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(params["b"], bias.detach().numpy(), rtol=1e-5, atol=1e-6)
        sched.step()


def test_schedule_values_per_epoch():
    schedule = multistep_schedule(0.005, (5, 10, 15), 0.1, steps_per_epoch=3)
    expected = [0.005] * 15 + [0.0005] * 15 + [0.00005] * 15 + [0.000005] * 6
    np.testing.assert_allclose([float(schedule(s)) for s in range(51)], expected, rtol=1e-6)
