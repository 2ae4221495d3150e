"""The one training loop, its optimizer, checkpoints and distributed setup."""

from plmkit.train.loop import NonFiniteError, StopTraining, TrainConfig, TrainResult, train

__all__ = ["NonFiniteError", "StopTraining", "TrainConfig", "TrainResult", "train"]
