"""The engine: the train state, step factories, task losses and a small ``fit()`` loop.

It sits between the models and the methods: the training loop (:mod:`jaxslim.training`) and the
methods that train as one of their steps (e.g. :func:`jaxslim.prune.distill`) are built on it; it
imports only the configs, the tree/sharding primitives and the models below it.
"""

from jaxslim.engine.fit import fit
from jaxslim.engine.losses import IGNORE, causal_lm_loss, classification_loss, mlm_loss
from jaxslim.engine.state import (
    TrainSetup,
    TrainState,
    abstract_train_state,
    count_params,
    create_abstract_train_state,
    create_train_state,
    make_setup,
    merge_model,
)
from jaxslim.engine.step import lm_objective, make_eval_step, make_train_step, mlm_objective

__all__ = [
    "IGNORE",
    "TrainSetup",
    "TrainState",
    "abstract_train_state",
    "causal_lm_loss",
    "classification_loss",
    "count_params",
    "create_abstract_train_state",
    "create_train_state",
    "fit",
    "lm_objective",
    "make_eval_step",
    "make_setup",
    "make_train_step",
    "merge_model",
    "mlm_loss",
    "mlm_objective",
]
