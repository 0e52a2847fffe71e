"""Training: the train state, jitted steps, losses, the loop, metric writers and plots.

``training/`` composes every other package; no other package imports it.
"""

from jaxslim.training.distributed import maybe_initialize
from jaxslim.training.loop import NonFiniteLossError, TrainResult, config_to_json, evaluate, report, train
from jaxslim.training.losses import IGNORE, causal_lm_loss, classification_loss, mlm_loss
from jaxslim.training.rundir import RunDirectory, RunDirectoryError
from jaxslim.training.state import (
    TrainSetup,
    TrainState,
    abstract_train_state,
    count_params,
    create_abstract_train_state,
    create_train_state,
    merge_model,
)
from jaxslim.training.step import lm_objective, make_eval_step, make_train_step, mlm_objective

__all__ = [
    "IGNORE",
    "NonFiniteLossError",
    "RunDirectory",
    "RunDirectoryError",
    "TrainResult",
    "TrainSetup",
    "TrainState",
    "abstract_train_state",
    "causal_lm_loss",
    "classification_loss",
    "config_to_json",
    "count_params",
    "create_abstract_train_state",
    "create_train_state",
    "evaluate",
    "lm_objective",
    "maybe_initialize",
    "merge_model",
    "make_eval_step",
    "make_train_step",
    "mlm_loss",
    "mlm_objective",
    "report",
    "train",
]
