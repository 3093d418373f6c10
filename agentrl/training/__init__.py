"""Training: stored trajectories → samples → tensors → GRPO/GSPO/SFT steps → new weights.

Modules: :mod:`~agentrl.training.datasets` (``DBRecordData``, ``convert_record_to_data_func``,
``preprocess_mm_messages_for_sample``), :mod:`~agentrl.training.tokenization` (tensors),
:mod:`~agentrl.training.advantages`, :mod:`~agentrl.training.loss` (registry keyed by
``loss_calculater``), :mod:`~agentrl.training.records` (claiming READY groups),
:mod:`~agentrl.training.trainer` (the loop), :mod:`~agentrl.training.weights` (publishing),
:mod:`~agentrl.training.checkpoint`, :mod:`~agentrl.training.metrics`.
"""

from agentrl.training.datasets import (
    DBRecordData,
    TrainTurn,
    convert_record_to_data_func,
    get_record_converter,
    preprocess_mm_messages_for_sample,
    register_record_converter,
)
from agentrl.training.loss import LossOutput, LossParams, get_loss, register_loss

__all__ = [
    "DBRecordData",
    "LossOutput",
    "LossParams",
    "TrainTurn",
    "convert_record_to_data_func",
    "get_loss",
    "get_record_converter",
    "preprocess_mm_messages_for_sample",
    "register_loss",
    "register_record_converter",
]
