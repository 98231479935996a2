"""The GPU check reads ``run.py``'s epoch log lines to time an end-to-end epoch: the line the
training loop prints must keep matching what the benchmark looks for."""
import torch

from benchmarks.gpu_throughput import EPOCH_LINE
from data import TensorSpuriousDataset
from models import build_model
from training.loops import make_optimizer, train_classifier
from utils.runtime import make_loader


def test_the_end_to_end_benchmark_recognises_every_erm_epoch_line(capsys):
    y = torch.randint(0, 2, (32,))
    data = TensorSpuriousDataset(torch.randn(32, 4), y, torch.zeros_like(y), 2, 1, "train")
    model = build_model("mlp", (4,), 2)
    loader = make_loader(data, 8, shuffle=True, generator=torch.Generator().manual_seed(0))
    train_classifier(model, loader, make_optimizer(model.parameters(), "adam", 1e-3), torch.device("cpu"), 3, "ERM")
    epochs = [int(m.group(1)) for m in map(EPOCH_LINE.match, capsys.readouterr().out.splitlines()) if m]
    assert epochs == [1, 2, 3]
