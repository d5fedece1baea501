"""Training: typed recipes, the paper's schedule, a resumable train/eval loop, DDP, plots.

matplotlib is imported on first plot, so importing ``condattn.train`` stays cheap.
"""

from condattn.train.config import ConfigError, TrainConfig
from condattn.train.loop import evaluate, train
from condattn.train.recipe import apply_overrides, config_from_dict, load_recipe
from condattn.train.schedule import PaperSchedule, make_scheduler

__all__ = [
    "ConfigError",
    "PaperSchedule",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "evaluate",
    "load_recipe",
    "make_scheduler",
    "train",
]
