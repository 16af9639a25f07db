"""Training: the theory models with the paper's recipe (`TrainConfig`, `train`), and the vision models at scale
(`FitConfig`, `OptimConfig`, `fit`, `evaluate_images`), each vision preset with its training recipe (`recipe_for`,
`override`)."""
from pmoe.train.evaluate import evaluate_images, task_loss
from pmoe.train.optim import OptimConfig, Schedule, make_optimizer, make_scheduler
from pmoe.train.recipes import RECIPES, Recipe, override, recipe_for
from pmoe.train.theory import TrainConfig, train
from pmoe.train.vision import FitConfig, fit, model_spec, resolve_device

__all__ = ["RECIPES", "FitConfig", "OptimConfig", "Recipe", "Schedule", "TrainConfig", "evaluate_images", "fit",
           "make_optimizer", "make_scheduler", "model_spec", "override", "recipe_for", "resolve_device", "task_loss",
           "train"]
