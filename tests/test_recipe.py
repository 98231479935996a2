"""--recipe original: the documented values, command-line overrides, and the original sparsity penalty."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import run
from methods.prusc import RECIPES, recipe_values
from models.masking import attach_masks, mask_parameters
from training.prune import sparsity_term
from utils.checkpoint import plain_args

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"


def documented_original() -> dict[str, str]:
    """Flag -> the "original recipe" cell of docs/recipe.md's table."""
    rows = re.findall(r"^\| `--(\w+)` \| [^|]+ \| ([^|]+) \|", DOC.read_text(), flags=re.M)
    return {name: cell.strip() for name, cell in rows}


def test_the_table_lists_every_recipe_value_and_run_py_sets_them():
    table = documented_original()
    assert set(table) == set(RECIPES["original"])
    args = run.parse_args(["--recipe", "original", "--data", "digits"])
    for name, cell in table.items():
        value = getattr(args, name)
        if name == "cluster_epoch":
            assert cell == "final" and value == args.epochs
        elif isinstance(value, bool):
            assert str(value) == cell, name
        elif isinstance(value, (int, float)):
            assert value == float(cell), name
        else:
            assert value == cell, name
    assert plain_args(args)["recipe"] == "original"


def test_a_typed_flag_overrides_the_recipe_and_others_keep_it():
    args = run.parse_args(["--recipe", "original", "--lr_main", "0.001", "--per_class", "--num_clusters", "3"])
    assert args.lr_main == 0.001 and args.per_class is True and args.num_clusters == 3
    assert args.mask_init == 1.5 and args.sparsity_penalty == "sum_logits" and args.retrain_ep == 5


def test_without_a_recipe_the_defaults_stay():
    args = run.parse_args([])
    assert (args.recipe, args.mask_init, args.sparsity_penalty, args.lr_prune) == ("none", 3.0, "mean_keep", None)


def test_celeba_gets_the_original_celeba_penalty():
    assert run.parse_args(["--recipe", "original", "--data", "celeba"]).lambda_sparse == 5e-8
    assert recipe_values("original", "waterbirds")["lambda_sparse"] == 1e-8


def test_sum_of_logits_penalty_gives_every_logit_the_gradient_lambda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4, 2))
    model.head = model[2]
    attach_masks(model, "all", 1.5)
    with torch.no_grad():
        for p in mask_parameters(model):
            p.uniform_(0.5, 4.0)  # unequal logits: the gradient must not depend on them
    lam = 1e-8
    (lam * sparsity_term(model, "sum_logits", 0.0)).backward()
    for p in mask_parameters(model):
        assert torch.equal(p.grad, torch.full_like(p, lam))
