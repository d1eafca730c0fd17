"""The synthesis engine: steps, dual-feasibility pruning, the NaN guard, history recording."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import image_classifier, plugin_module, register_after_construction
from ignite.engine import Events
from torch import nn

from dsv import kkt
from dsv.builtin.losses import Stationarity
from dsv.builtin.priors import Norm, TotalVariation
from dsv.errors import NonFiniteLossError, StoreError
from dsv.plugins import DsvPluginManager
from dsv.store import RunStore, is_store, remove_store
from dsv.synthesis.engine import build_engine

STORE_META = {"name": "test", "mean": [0.3], "std": [0.4], "classes": [str(i) for i in range(10)]}


def new_store(path, run) -> RunStore:
    store = RunStore.create(path, dict(STORE_META))
    store.init_candidates(run.x.detach().numpy(), run.lambdas.detach().numpy(), run.targets.numpy(), run.alive.numpy())
    run.store = store
    return store


class NaNAfter(nn.Module):
    """Wraps a classifier; from forward call number ``after + 1`` on, its logits are NaN."""

    def __init__(self, inner: nn.Module, after: int):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls > self.after else out


def test_a_step_moves_x_and_lambda_and_reports_every_term(make_run):
    run = make_run(priors=[("tv", TotalVariation(weight=0.1)), ("norm", Norm(weight=0.1))])
    x0, l0 = run.x.detach().clone(), run.lambdas.detach().clone()
    theta0 = [p.detach().clone() for p in run.model.parameters()]
    metrics = run.step(1)
    assert {"primal", "stationarity", "tv", "norm", "total", "entropy", "accuracy", "alive"} <= set(metrics)
    expected_total = metrics["primal"] + metrics["stationarity"] + 0.1 * metrics["tv"] + 0.1 * metrics["norm"]
    assert metrics["total"] == pytest.approx(expected_total, rel=1e-5)
    assert metrics["alive"] == 4.0 and 0.0 <= metrics["accuracy"] <= 1.0
    assert not torch.equal(run.x.detach(), x0)
    assert not torch.equal(run.lambdas.detach(), l0)
    # theta is frozen: nothing in the model moved
    assert all(torch.equal(p, q) for p, q in zip(run.model.parameters(), theta0))


def test_augmented_terms_are_evaluated_and_weighted(make_run):
    run = make_run(augmentations=[lambda x: x.flip(-1)], augmented_weight=0.5)
    metrics = run.step(1)
    assert {"primal_aug", "stationarity_aug"} <= set(metrics)
    expected = metrics["primal"] + metrics["stationarity"] + 0.5 * (metrics["primal_aug"] + metrics["stationarity_aug"])
    assert metrics["total"] == pytest.approx(expected, rel=1e-5)


def test_synthesis_lowers_the_objective_on_a_trained_model(make_run, digits_bundle):
    """A few hundred Adam steps on real digits: the KKT objective must go down."""
    images, labels = digits_bundle.tensors("train")
    model = image_classifier(seed=0)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs = (images - 0.3) / 0.4
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        opt.step()
    for p in model.parameters():
        p.requires_grad_(False)
    accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.8
    run = make_run(model=model, n=10, iterations=60)
    first = run.step(1)
    for i in range(2, 61):
        last = run.step(i)
    assert last["total"] < 0.5 * first["total"]
    assert last["accuracy"] > first["accuracy"] or last["accuracy"] == 1.0


# --------------------------------------------------------------------------------------------------
# dual feasibility: pruning
# --------------------------------------------------------------------------------------------------


def test_a_candidate_with_negative_lambda_is_pruned_and_frozen(make_run):
    pruned_calls = []

    def dsv_candidate_pruned(run, indices, iteration):
        pruned_calls.append((indices, iteration))

    pm = DsvPluginManager(load_entry_points=False)
    register_after_construction(pm, plugin_module("m", dsv_candidate_pruned=dsv_candidate_pruned), "prune_log")
    run = make_run(hooks=pm)
    with torch.no_grad():
        run.lambdas[1] = -0.5  # far below what one Adam step (lr 0.05) can undo
    metrics = run.step(1)
    assert run.alive.tolist() == [True, False, True, True]
    assert metrics["alive"] == 3.0
    assert pruned_calls == [([1], 1)]
    x_dead, l_dead = run.x.detach()[1].clone(), run.lambdas.detach()[1].clone()
    x_alive = run.x.detach()[0].clone()
    for i in range(2, 7):
        run.step(i)
    assert torch.equal(run.x.detach()[1], x_dead)  # Adam's momentum must not move it either
    assert torch.equal(run.lambdas.detach()[1], l_dead)
    assert not torch.equal(run.x.detach()[0], x_alive)
    assert len(pruned_calls) == 1  # pruned once, not on every later step


def test_dead_candidates_do_not_count_in_the_kkt_terms(make_run):
    run = make_run()
    with torch.no_grad():
        run.lambdas[2] = -1.0
    run.step(1)
    assert not run.alive[2]
    batch = run.batch(run.x)
    keep = torch.tensor([0, 1, 3])
    stationarity = run.losses[1][1]
    expected = kkt.stationarity_loss(
        run.model(run.x[keep]),
        run.targets[keep],
        run.lambdas[keep],
        torch.ones(3, dtype=torch.bool),
        stationarity.tensors,
        "l2",
    )
    if stationarity.relative:  # the term is reported relative to its value with every lambda = 0
        expected = expected / kkt.zero_multiplier_distance(stationarity.tensors, "l2")
    assert stationarity(batch).item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# NaN guard and the store
# --------------------------------------------------------------------------------------------------


def test_nan_guard_stops_and_keeps_the_last_good_iteration_in_the_store(make_run, tmp_path):
    run = make_run(model=NaNAfter(image_classifier(seed=3), after=5), iterations=10, checkpoint_every=4)
    new_store(tmp_path / "run.zarr", run)
    x_before = {}

    def remember(engine):
        x_before[engine.state.iteration] = run.x.detach().clone()

    engine = build_engine(run)
    engine.add_event_handler(Events.ITERATION_COMPLETED, remember)
    with pytest.raises(NonFiniteLossError) as info:
        engine.run(data=None, max_epochs=1, epoch_length=10)
    message = str(info.value)
    assert "iteration 6" in message and "store holds iteration 5" in message
    assert "primal" in message
    reopened = RunStore.open(tmp_path / "run.zarr")
    assert reopened.meta["committed_iteration"] == 5
    assert reopened.history_length == 5
    history = reopened.history()
    assert history["iteration"].tolist() == [1, 2, 3, 4, 5]
    assert history["lambda"].shape == (5, 4)
    assert np.all(np.isfinite(history["total"]))
    candidates = reopened.candidates()
    assert np.all(np.isfinite(candidates["x"]))
    assert np.array_equal(candidates["x"], x_before[5].numpy())  # the state after iteration 5


def test_nan_at_the_first_iteration_commits_nothing(make_run, tmp_path):
    run = make_run(model=NaNAfter(image_classifier(), after=0), iterations=5)
    x0 = run.x.detach().clone()
    store = new_store(tmp_path / "run.zarr", run)
    with pytest.raises(NonFiniteLossError, match="iteration 1"):
        build_engine(run).run(data=None, max_epochs=1, epoch_length=5)
    assert store.meta["committed_iteration"] == 0 and store.history_length == 0
    assert torch.equal(run.x.detach(), x0)


# --------------------------------------------------------------------------------------------------
# history recording
# --------------------------------------------------------------------------------------------------


def test_record_every_keeps_the_first_every_kth_and_the_last_iteration(make_run, tmp_path):
    run = make_run(iterations=10, record_every=3, checkpoint_every=4)
    store = new_store(tmp_path / "run.zarr", run)
    build_engine(run).run(data=None, max_epochs=1, epoch_length=10)
    assert store.meta["committed_iteration"] == 10
    history = store.history()
    assert history["iteration"].tolist() == [1, 3, 6, 9, 10]
    assert store.history_length == 5
    for name in ("primal", "stationarity", "total", "entropy", "accuracy", "alive"):
        assert history[name].shape == (5,), name
    assert history["lambda"].shape == (5, 4)
    assert np.allclose(history["lambda"][-1], run.lambdas.detach().numpy())
    assert np.array_equal(store.candidates()["x"], run.x.detach().numpy())
    assert run.pending == {}


def test_flush_without_a_store_only_advances_the_committed_iteration(make_run):
    run = make_run(iterations=3)
    build_engine(run).run(data=None, max_epochs=1, epoch_length=3)
    assert run.committed_iteration == 3
    assert run.pending["iteration"] == [1, 2, 3]
    summary = run.summary()
    assert summary["candidates"] == 4 and summary["iterations"] == 3
    assert 0.0 < summary["relative_stationarity"]
    assert summary["stationarity_params"] == 16 * 10 + 10


# --------------------------------------------------------------------------------------------------
# store helpers
# --------------------------------------------------------------------------------------------------


def test_remove_store_refuses_a_plain_folder(tmp_path, make_run):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert not is_store(folder)
    with pytest.raises(StoreError, match="not a dsv store"):
        remove_store(folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    store = new_store(tmp_path / "s.zarr", make_run())
    assert is_store(store.path)
    with pytest.raises(StoreError, match="already exists"):
        RunStore.create(store.path, {})
    remove_store(store.path)
    assert not store.path.exists()
    with pytest.raises(StoreError, match="no such store"):
        RunStore.open(store.path)


def test_an_early_stop_records_the_final_iteration(make_run, tmp_path):
    """A run stopped by a plugin at iteration 7 (record_every 5) must still record iteration 7:
    ``show`` reads entropy_end from the last history row, which must be the committed state."""

    def dsv_iteration_completed(iteration):
        return iteration == 7

    pm = DsvPluginManager(load_entry_points=False)
    register_after_construction(pm, plugin_module("m", dsv_iteration_completed=dsv_iteration_completed), "stop7")
    run = make_run(hooks=pm, iterations=20, record_every=5)
    store = new_store(tmp_path / "run.zarr", run)
    build_engine(run).run(data=None, max_epochs=1, epoch_length=20)
    assert store.meta["committed_iteration"] == 7
    iterations = store.history()["iteration"].tolist()
    assert iterations[:2] == [1, 5]
    assert iterations[-1] == 7, iterations


# --------------------------------------------------------------------------------------------------
# resolution schedule, lambda warm-up, target rows
# --------------------------------------------------------------------------------------------------


class PooledClassifier(nn.Module):
    """Accepts any input size (global average pooling), like EfficientNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_resolution_schedule_upscales_candidates_and_keeps_lambda_state(make_run):
    run = make_run(model=PooledClassifier(), resolutions=[(1, 8), (3, 16)])
    run.step(1)
    run.step(2)
    before = run.x.detach().clone()
    lambda_state = run.optimizer.state[run.lambdas]
    run.step(3)
    assert run.x.shape == (4, 1, 16, 16)
    assert run.x.requires_grad and run.x.is_leaf
    # the upscaled image is the old one, bilinearly resized, moved by one step only
    resized = torch.nn.functional.interpolate(before, size=(16, 16), mode="bilinear", align_corners=False)
    assert (run.x.detach() - resized).abs().max() < 0.2
    assert run.optimizer.state[run.lambdas]["step"] == lambda_state["step"]


class FixedSizeClassifier(nn.Module):
    """Takes 16x16 inputs only (a flattening head), like a DC ConvNet; records what it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 10)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_upsample_shows_a_fixed_size_model_its_size_while_candidates_grow_coarse_to_fine(make_run):
    model = FixedSizeClassifier()
    run = make_run(model=model, resolutions=[(1, 8), (3, 16)], model_size=16, augmentations=[lambda x: x.flip(-1)])
    run.step(1)
    assert run.x.shape == (4, 1, 8, 8)  # the candidates live at the stage's size
    assert model.seen and set(model.seen) == {(16, 16)}  # the model saw them upsampled, clean and augmented
    assert run.x.grad is not None and run.x.grad.shape == (4, 1, 8, 8) and run.x.grad.abs().sum() > 0
    x8 = run.x.detach().clone()
    run.step(2)
    assert not torch.equal(run.x.detach(), x8)  # the coarse candidates themselves move
    run.step(3)
    assert run.x.shape == (4, 1, 16, 16)
    assert torch.equal(run.model_input(run.x), run.x)  # at the model's size: shown as they are
    assert run.summary()["candidates"] == 4
    # without upsample the same schedule feeds the model 8x8 inputs, which it cannot take
    with pytest.raises(RuntimeError):
        make_run(model=FixedSizeClassifier(), resolutions=[(1, 8), (3, 16)]).step(1)


def test_lambda_is_held_during_warmup(make_run):
    run = make_run(lambda_warmup=2)
    l0 = run.lambdas.detach().clone()
    run.step(1)
    run.step(2)
    assert torch.equal(run.lambdas.detach(), l0)
    run.step(3)
    assert not torch.equal(run.lambdas.detach(), l0)


def test_stationarity_on_target_rows_counts_only_those_rows(make_run):
    run = make_run(n=3)  # targets 0, 1, 2 of 10 classes
    term = Stationarity(rows="targets", distance="l1", params="head")
    term.attach(run.model)
    batch = run.batch(run.x)
    summary = term.summary(batch)
    head = term.tensors
    assert summary["stationarity_params"] == 3 * head[0].shape[1] + 3
    with torch.no_grad():  # by hand: relative L1 over rows 0..2 of weight and bias
        run.lambdas.zero_()
    assert term(run.batch(run.x)).item() == pytest.approx(1.0)


def test_one_augmentation_per_step_is_drawn_from_the_seeded_generator(make_run):
    """augmentation_sampling = "one": each step applies exactly one of the augmentations, drawn
    from torch's global generator (so a seeded run repeats, and a resumed one continues, the draw);
    "all" chains every one of them each step."""
    calls: list[str] = []

    def tagged(name: str):
        def augment(t):
            calls.append(name)
            return t.flip(-1) if name == "flip" else t + 0.01

        return augment

    augs = [tagged("flip"), tagged("shift"), tagged("noise")]
    drawn = []
    for _ in range(2):
        torch.manual_seed(7)
        calls.clear()
        run = make_run(augmentations=augs, augmentation_sampling="one")
        for i in range(1, 13):
            run.step(i)
        drawn.append(list(calls))
    assert len(drawn[0]) == 12 and drawn[0] == drawn[1]
    assert len(set(drawn[0])) > 1  # not always the same one
    calls.clear()
    make_run(augmentations=augs, augmentation_sampling="all").step(1)
    assert calls == ["flip", "shift", "noise"]


def test_sgd_takes_plain_gradient_steps_on_x_and_lambda(make_run):
    """optimizer = "sgd" (Algorithm 1): x and lambda move by exactly lr times their gradient."""
    run = make_run(optimizer_kind="sgd", lr_x=0.1, lr_lambda=0.5)
    x0, lam0 = run.x.detach().clone(), run.lambdas.detach().clone()
    run.step(1)
    assert torch.allclose(run.x.detach(), x0 - 0.1 * run.x.grad, atol=1e-7)
    assert torch.allclose(run.lambdas.detach(), lam0 - 0.5 * run.lambdas.grad, atol=1e-7)
    assert not run.optimizer.state.get(run.x)  # no moments: nothing to checkpoint


def test_the_papers_options_resume_to_the_uninterrupted_result(make_run):
    """One augmentation drawn per step and plain gradient steps: a run stopped after 5 steps and
    restored from its checkpoint state takes the same remaining steps as an uninterrupted run."""
    augs = [lambda t: t.flip(-1), lambda t: t + 0.05 * torch.randn_like(t), lambda t: t.roll(1, dims=-1)]
    options = dict(augmentations=augs, augmentation_sampling="one", optimizer_kind="sgd", lr_x=0.05, lr_lambda=0.1)
    torch.manual_seed(11)
    whole = make_run(**options)
    for i in range(1, 11):
        whole.step(i)
    torch.manual_seed(11)
    first = make_run(**options)
    for i in range(1, 6):
        first.step(i)
    arrays, scalars = first.state()
    torch.manual_seed(999)  # another RNG state: the checkpoint must bring back the draw
    resumed = make_run(**options)
    resumed.restore(arrays, scalars, 5)
    for i in range(6, 11):
        resumed.step(i)
    assert torch.equal(resumed.x.detach(), whole.x.detach())
    assert torch.equal(resumed.lambdas.detach(), whole.lambdas.detach())
