"""Training: the loop that composes the methods, run directories, metric writers and plots.

``training/`` sits above every package but the CLIs: nothing in ``jaxslim`` outside ``cli/`` imports
it. The train state, step factories and losses it re-exports live in :mod:`jaxslim.engine`.
"""

from jaxslim.engine.losses import IGNORE, causal_lm_loss, classification_loss, mlm_loss
from jaxslim.engine.state import (
    TrainSetup,
    TrainState,
    abstract_train_state,
    count_params,
    create_abstract_train_state,
    create_train_state,
    merge_model,
)
from jaxslim.engine.step import lm_objective, make_eval_step, make_train_step, mlm_objective
from jaxslim.training.distributed import maybe_initialize
from jaxslim.training.loop import TrainResult, config_to_json, methods_of, report, train
from jaxslim.training.run import NonFiniteLossError, Run, evaluate
from jaxslim.training.rundir import RunDirectory, RunDirectoryError

__all__ = [
    "IGNORE",
    "NonFiniteLossError",
    "Run",
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
    "methods_of",
    "make_eval_step",
    "make_train_step",
    "mlm_loss",
    "mlm_objective",
    "report",
    "train",
]
