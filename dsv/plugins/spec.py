"""Hook specifications of dsv.

Every extension point of dsv is a pluggy hook whose name starts with ``dsv_``. Built-in
implementations live in :mod:`dsv.builtin` and are registered exactly like third-party plugins,
which load from the entry point group ``dsv``.

Hooks come in two phases:

* **registration** (called once when the plugin manager is built): each hook receives a
  :class:`dsv.plugins.registry.Registry` and adds named factories to it. A name may be registered only once;
  a second registration of the same name is an error that names both plugins.
* **lifecycle** (called during a synthesis run): plugins observe a run, log it, or ask it to stop.
  Their options come from the pipeline's ``[plugins.<name>]`` table, through the class registered
  with :func:`dsv_register_plugin_options`, as ``run.plugin_options[name]``. Iterations are
  numbered from 1. docs/writing-plugins.md states every contract with a working example.

A factory registered for losses, priors, augmentations, initializers, retrainers is an attrs class
(or any callable whose keyword parameters are its options): the pipeline table
``{ name = "tv", weight = 1e-4 }`` becomes ``registry.get("tv")(weight=1e-4)``, with every option
type-checked and every unknown option reported with its key path.
"""

from __future__ import annotations

from typing import Any

import pluggy

from dsv.plugins.contracts import SynthesisRunView
from dsv.plugins.registry import Registry

hookspec = pluggy.HookspecMarker("dsv")
hookimpl = pluggy.HookimplMarker("dsv")


# --------------------------------------------------------------------------------------------------
# registration hooks
# --------------------------------------------------------------------------------------------------


@hookspec
def dsv_register_losses(registry: Registry[Any]) -> None:
    """Register KKT loss terms.

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``.

    A loss term is called as ``term(batch)`` with a :class:`dsv.kkt.KKTBatch` (model, inputs,
    logits, soft targets, lambdas, alive mask, stationarity parameters) and returns a scalar
    tensor. Loss terms are evaluated on the clean candidates and on their augmented copies.
    A term may define ``summary(batch) -> dict`` for figures written at the end of a run.
    """


@hookspec
def dsv_register_priors(registry: Registry[Any]) -> None:
    """Register image priors (manifold terms evaluated on the clean candidates only).

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``.

    A prior is called as ``prior(x)`` with the candidates (N, C, H, W) in model input space and
    returns a scalar tensor. A prior that needs the model (for example feature statistics) may
    define ``attach(model)`` and ``detach()``; dsv calls them around the run, also on failure.
    In each step the model has already made its clean forward pass on that very tensor
    (``model(x)``; the augmented pass, if any, comes after it), so forward hooks put on by
    ``attach`` can reuse the clean pass instead of running one more (see plugins/dsv-bn-prior).
    """


@hookspec
def dsv_register_augmentations(registry: Registry[Any]) -> None:
    """Register augmentations (applied to the candidates before the augmented KKT terms).

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``.

    A factory returns an ``nn.Module`` mapping (N, C, H, W) to (N, C, H, W), differentiable with
    respect to its input (kornia augmentations are). Randomness must come from torch's generator.
    """


@hookspec
def dsv_register_initializers(registry: Registry[Any]) -> None:
    """Register candidate initializers.

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``.

    An initializer is called as ``init(shape, labels, context)`` where ``shape`` is (N, C, H, W),
    ``labels`` the hard target of each candidate (N,), and ``context`` a
    :class:`dsv.plugins.InitContext` (generator, data set bundle or None, normalization)
    and returns the initial candidates in model input space.
    """


@hookspec
def dsv_register_retrainers(registry: Registry[Any]) -> None:
    """Register retrainers: the training loops that fit a classifier to a data set.

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``.

    A retrainer is called as ``retrainer.fit(model, dataset, device=..., seed=..., progress=...)``
    and returns the trained model. The ``train`` stage uses one for the base classifier.
    """


@hookspec
def dsv_register_models(registry: Registry[Any]) -> None:
    """Register model sources.

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``;
        a name ending in ``:`` is a prefix source (``torchvision:resnet50``) whose factory gets
        the rest of the name as ``target``.

    A model source is called as ``source(spec, **options)`` where ``spec`` is a
    :class:`dsv.plugins.ModelRequest` (data set input spec or None, weights path) and
    returns a :class:`dsv.plugins.LoadedModel` (module in eval mode + input spec).
    """


@hookspec
def dsv_register_datasets(registry: Registry[Any]) -> None:
    """Register data sets.

    :param dsv.plugins.Registry registry: add factories with ``registry.add(name, factory)``.

    A data set factory is called as ``factory(root=..., download=..., **options)`` and returns a
    :class:`dsv.plugins.DatasetBundle` (train and test splits as tensors, class names,
    normalization, fingerprint).
    """


@hookspec
def dsv_register_stages(registry: Registry[Any]) -> None:
    """Register pipeline stages.

    :param dsv.plugins.registry.Registry registry: add stages with
        ``registry.add(name, dsv.pipeline.Stage(...))``.

    A :class:`dsv.pipeline.Stage` names its ``[name]`` table (an attrs class, checked like every
    other table: unknown keys and wrong types are errors naming the key path), its place in the
    order (``order``; the built-ins use 0 for train, 100 for synthesize, 200-900 after it), whether
    its table may change when a run resumes (``resumable``), and ``run(context, store)``. A
    pipeline runs the stages its ``run.stages`` lists, in order; ``context`` is a
    :class:`dsv.pipeline.StageContext` (config, model, data, plugins, device, progress, source)
    and ``store`` the run store. ``run`` records what it measured with ``store.put_result`` and
    returns the paths of the files it wrote. See docs/writing-plugins.md.
    """


@hookspec
def dsv_register_plugin_options(registry: Registry[Any]) -> None:
    """Register the options of a plugin as a whole: its own ``[plugins.<name>]`` table of a
    pipeline file (the way lifecycle hooks take options).

    :param dsv.plugins.Registry registry: add ``registry.add(name, OptionsClass)``, where
        ``OptionsClass`` is an attrs class whose fields (all with defaults, or the table is needed)
        are the keys of ``[plugins.<name>]``. Use the plugin's own name (its entry point name).

    The table is structured and checked when the pipeline file loads, before any stage runs, with
    every other problem of the file (unknown keys, wrong types, failing validators: each names
    ``plugins.<name>.<key>``); a ``[plugins.<name>]`` that no plugin registered is an error. The
    hooks find the object as ``run.plugin_options[name]`` (the defaults when the file has no
    table), stages as ``context.config.plugin_options[name]``. The tables are left out of the
    config hash: they configure what observes a run, not what it computes.
    """


# --------------------------------------------------------------------------------------------------
# lifecycle hooks
# --------------------------------------------------------------------------------------------------


@hookspec
def dsv_run_started(run: SynthesisRunView) -> None:
    """Called once before the first synthesis iteration; with ``synthesis.groups`` > 1 once per
    candidate group, in the process that runs it (each group is a run of its own candidates).

    :param dsv.synthesis.engine.SynthesisRun run: the run (config, model, candidates, store).
    """


@hookspec
def dsv_iteration_completed(run: SynthesisRunView, iteration: int, metrics: dict[str, float]) -> bool | None:
    """Called after every synthesis iteration.

    :param dsv.synthesis.engine.SynthesisRun run: the run; its tensors are read-only for plugins.
    :param int iteration: the 1-based iteration just completed.
    :param dict metrics: float value of every recorded term of this iteration.
    :return: ``True`` to ask the run to stop after this iteration (the store is written first).
    """


@hookspec
def dsv_candidate_pruned(run: SynthesisRunView, indices: list[int], iteration: int) -> None:
    """Called when candidates lose dual feasibility (lambda < 0) and are marked dead.

    :param dsv.synthesis.engine.SynthesisRun run: the run.
    :param list[int] indices: the candidates just pruned.
    :param int iteration: the iteration at which they were pruned.
    """


@hookspec
def dsv_run_finished(run: SynthesisRunView, summary: dict[str, Any]) -> None:
    """Called once after the last iteration, when the store holds the final state (once per
    candidate group, as :func:`dsv_run_started`).

    :param dsv.synthesis.engine.SynthesisRun run: the run.
    :param dict summary: the run (or group) summary (the keys of ``dsv-pipeline show --json``).
    """
