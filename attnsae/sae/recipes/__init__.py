"""Training recipes, one file each; `RECIPES` maps TrainConfig.recipe to the class."""

from .base import Recipe, StepOutput
from .batchtopk import BatchTopKRecipe
from .jumprelu import JumpReLURecipe
from .l1 import L1Recipe
from .l1_decnorm import L1DecoderNormRecipe
from .matryoshka_batchtopk import MatryoshkaBatchTopKRecipe
from .topk import TopKRecipe

RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (
    L1Recipe, L1DecoderNormRecipe, TopKRecipe, BatchTopKRecipe, JumpReLURecipe, MatryoshkaBatchTopKRecipe)}

__all__ = ["RECIPES", "Recipe", "StepOutput", "L1Recipe", "L1DecoderNormRecipe", "TopKRecipe", "BatchTopKRecipe",
           "JumpReLURecipe", "MatryoshkaBatchTopKRecipe"]
