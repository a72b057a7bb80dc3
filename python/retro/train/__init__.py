"""Training RETRO and its GPT baseline on a retrieval database (CLI ``retro train``).

    from retro.train import TrainConfig, train
    run = train(TrainConfig(db="db", out="runs/retro", model="retro", max_iters=200,
                            model_args={"block_size": 256}))

config.py holds the settings and the typed overrides, data.py the samples with their
neighbours, optim.py AdamW and the schedule, loop.py the loop, log.py RUN/log.jsonl,
distributed.py DDP / FSDP2 and the rank's share of each batch under torchrun,
distributed_checkpoint.py the DCP checkpoints and their conversion to and from the canonical one,
checkpoint.py RUN/ckpt.safetensors, run_db.py the run's database opened again (evaluation,
generation), flops.py the model FLOPs per token.
"""

from typing import TYPE_CHECKING

from retro._lazy import lazy_names
from retro.train.config import TrainConfig
from retro.train.log import read_log

if TYPE_CHECKING:
    from retro.train.loop import train

# torch-backed: imported on first use, so that `retro train --help` needs no torch
__getattr__ = lazy_names(__name__, {"train": "retro.train.loop"})

__all__ = ["TrainConfig", "read_log", "train"]
