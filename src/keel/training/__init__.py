"""Training inside Keel: declared models, trainers (LightGBM, XGBoost, scikit-learn,
PyTorch), point-in-time training sets split in time, evaluation on later data, checkpoints
that survive preemption, and reproduction of a registered model from its lineage."""

from keel.training.checkpoint import Checkpoint, CheckpointStore, Preempted, Preemption
from keel.training.dataset import TrainingData, build_training_data, check_model
from keel.training.definitions import Label, Model, TimeSplit
from keel.training.metrics import evaluate, parse_metric
from keel.training.reproduce import ModelReproduction, reproduce_model
from keel.training.run import PHASES, TrainResult, fit, train_model
from keel.training.torch_trainer import Torch
from keel.training.trainers import LightGBM, RunContext, Sklearn, Trainer, XGBoost

__all__ = [
    "PHASES",
    "Checkpoint",
    "CheckpointStore",
    "Label",
    "LightGBM",
    "Model",
    "ModelReproduction",
    "Preempted",
    "Preemption",
    "RunContext",
    "Sklearn",
    "TimeSplit",
    "Torch",
    "TrainResult",
    "Trainer",
    "TrainingData",
    "XGBoost",
    "build_training_data",
    "check_model",
    "evaluate",
    "fit",
    "parse_metric",
    "reproduce_model",
    "train_model",
]
