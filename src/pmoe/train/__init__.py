"""Training: the theory models with the paper's recipe (`TrainConfig`, `train`), and the vision models at scale
(`FitConfig`, `OptimConfig`, `fit`, `evaluate_images`)."""
from pmoe.train.evaluate import evaluate_images, task_loss
from pmoe.train.optim import OptimConfig, Schedule, make_optimizer, make_scheduler
from pmoe.train.theory import TrainConfig, train
from pmoe.train.vision import FitConfig, fit, model_spec, resolve_device

__all__ = ["FitConfig", "OptimConfig", "Schedule", "TrainConfig", "evaluate_images", "fit", "make_optimizer",
           "make_scheduler", "model_spec", "resolve_device", "task_loss", "train"]
