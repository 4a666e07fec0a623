"""Models of the paper's experiments, as LightningModules that declare their hyperparameters.

Import them from their modules (``lightning_hyperopt.models.mlp.MLP``), as the configs do.
"""
