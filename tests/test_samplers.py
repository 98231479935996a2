"""Training batches: every sample once per epoch, and never a last batch of one sample (BatchNorm
cannot train on one value per channel, e.g. a ResNet's 1x1 maps at 16x16 or 32x32 input)."""
import torch

from data import TensorSpuriousDataset
from models import build_model
from training.samplers import training_loader


def split(x: torch.Tensor, y: torch.Tensor) -> TensorSpuriousDataset:
    return TensorSpuriousDataset(x, y, torch.zeros_like(y), 2, 1, "train")


def batch_sizes(n: int, batch_size: int) -> list[int]:
    data = split(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long))
    return [len(y) for _x, y, _a, _i in training_loader(data, batch_size, torch.Generator().manual_seed(0))]


def test_a_last_batch_of_one_sample_is_dropped_and_no_other():
    assert batch_sizes(129, 64) == [64, 64]
    assert batch_sizes(130, 64) == [64, 64, 2]
    assert batch_sizes(128, 64) == [64, 64]
    assert batch_sizes(1, 64) == [1]  # a split of one sample still trains (nothing else to drop to)


def test_a_resnet_trains_on_every_batch_of_a_split_of_65_at_16x16():
    data = split(torch.randn(65, 3, 16, 16), torch.randint(0, 2, (65,)))
    model = build_model("resnet18", (3, 16, 16), 2).train()
    for x, y, _a, _i in training_loader(data, 64, torch.Generator().manual_seed(0)):
        torch.nn.functional.cross_entropy(model(x), y).backward()
