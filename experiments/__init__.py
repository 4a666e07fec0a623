"""The paper's experiments (not installed): the models of its tables as LightningModules that
declare their hyperparameters (:mod:`experiments.models`), the MNIST and Penn Treebank data
modules (:mod:`experiments.data`) and the quadratic problem of Table 1
(:mod:`experiments.quadratic`). The configs of ``examples/configs`` and the benchmarks train
them; a user's own project needs none of them.
"""
