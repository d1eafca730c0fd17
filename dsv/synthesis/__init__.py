"""Synthesis: assembling a run from a ``[synthesis]`` table (:mod:`dsv.synthesis.build`), the ignite
engine of one DeepKKT loop (:mod:`dsv.synthesis.engine`), running it into a store
(:mod:`dsv.synthesis.execution`), candidate groups (:mod:`dsv.synthesis.groups`), several processes
(:mod:`dsv.synthesis.distributed`), TensorBoard logging (:mod:`dsv.synthesis.tensorboard`) and what a
user's own model takes and predicts (:mod:`dsv.synthesis.inputs`)."""
