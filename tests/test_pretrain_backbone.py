"""scripts/pretrain_backbone.py: its file loads through --pretrained_path and changes what ERM learns."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import read_results
from data.fashion_scenes import make_scenes
from models.resnet import ResNet
from scripts import pretrain_backbone

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte").exists() and
                                not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST IDX files not installed")
SIZE = 16


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A stand-in from a few pretraining steps on a tiny corpus."""
    out = tmp_path_factory.mktemp("pretrained") / "r18.pt"
    assert pretrain_backbone.main([str(out), "--size", str(SIZE), "--n_images", "40", "--epochs", "1",
                                   "--batch_size", "16", "--fashion_dir", str(FASHION_DIR)]) == 0
    return out


def test_the_corpus_leaves_out_every_item_the_scenes_draw():
    from data.cmnist import load_idx_pair
    from data.fashion_scenes import plan
    labels = load_idx_pair(FASHION_DIR, "fashion", "train")[1]
    used = set(plan({"train": labels}, {"train": 4795, "val": 1199}, 0.95, 0).source)
    free = set(pretrain_backbone.unused_items(labels, [0]).tolist())
    assert not used & free and len(free) == len(labels) - len(used)


def test_the_corpus_is_the_same_however_many_workers_draw_it():
    one = pretrain_backbone.build_corpus(FASHION_DIR, 24, SIZE, 0, [0], workers=1)
    two = pretrain_backbone.build_corpus(FASHION_DIR, 24, SIZE, 0, [0], workers=2)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.slow
def test_amp_pretrains_under_bf16_and_the_summary_says_so(tmp_path):
    out = tmp_path / "r18_bf16.pt"
    assert pretrain_backbone.main([str(out), "--size", str(SIZE), "--n_images", "20", "--epochs", "1", "--max_steps",
                                   "1", "--batch_size", "16", "--amp", "force", "--fashion_dir", str(FASHION_DIR)]) == 0
    summary = json.loads((tmp_path / "r18_bf16.pt.json").read_text())
    assert summary["bf16"] is True and summary["device"] == "cpu" and summary["steps"] == 1
    state = torch.load(out, weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state.values())


def test_the_stand_in_loads_through_pretrained_path(stand_in):
    state = torch.load(stand_in, weights_only=True)
    model = ResNet((3, SIZE, SIZE), 2, "resnet18", pretrained_path=str(stand_in))
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    summary = json.loads((stand_in.parent / "r18.pt.json").read_text())
    assert summary["device"] == "cpu" and summary["bf16"] is False


@pytest.mark.slow
def test_erm_from_the_stand_in_differs_from_a_random_start(run_cli, stand_in, tmp_path):
    scenes = tmp_path / "scenes"
    make_scenes(scenes, FASHION_DIR, {"train": 64, "val": 16, "test": 32}, 0.95, 0, SIZE)
    common = ["--mode", "erm", "--data", "waterbirds", "--train_root_dir", scenes, "--image_size", SIZE,
              "--arch", "resnet18", "--epochs", "1", "--batch_size", "16", "--device", "cpu", "--cluster_epoch", "1"]
    accuracy = {}
    for name, extra in (("random", []), ("stand_in", ["--pretrained_path", stand_in])):
        rc, _, err = run_cli(*common, *extra, "--out_dir", tmp_path / name)
        assert rc == 0, err
        accuracy[name] = read_results(tmp_path / name)["splits"]["test"]["avg_acc"]
    assert accuracy["random"] != accuracy["stand_in"]


def test_an_existing_summary_or_a_file_above_out_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "b.pt.json").write_text("the user's notes")
    (tmp_path / "file").write_text("")
    assert pretrain_backbone.main([str(tmp_path / "b.pt")]) == 2
    assert pretrain_backbone.main([str(tmp_path / "file" / "b.pt")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b.pt.json'} exists; pass --overwrite" in err and "is a file, not a folder" in err
    assert (tmp_path / "b.pt.json").read_text() == "the user's notes" and not (tmp_path / "b.pt").exists()
