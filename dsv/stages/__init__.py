"""The built-in stages, one module each. A stage module owns its table (an attrs class), its
checks and ``run(context, store)``, and ends with ``STAGE``, the :class:`dsv.pipeline.Stage` that
:mod:`dsv.builtin.stages` registers exactly as a third-party plugin registers its own.

Order: train (0, phase ``model``), synthesize (100, phase ``store``), then select 200, retrain
300, evaluate 400, analyse 500, interpolate 600, edit 700, export 900."""
