"""Training recipes, one file each; `RECIPES` maps TrainConfig.recipe to the class."""

from .base import Recipe, StepOutput
from .l1 import L1Recipe
from .l1_decnorm import L1DecoderNormRecipe
from .topk import TopKRecipe

RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (L1Recipe, L1DecoderNormRecipe, TopKRecipe)}

__all__ = ["RECIPES", "Recipe", "StepOutput", "L1Recipe", "L1DecoderNormRecipe", "TopKRecipe"]
