"""models.factory.load_model: the one checkpoint loader, with every check as a one-line error."""
from __future__ import annotations

import argparse

import pytest
import torch

from models import build_model
from models.factory import Expect, checked_checkpoint, checkpoint_content, load_model
from models.masking import attach_masks, set_mask_mode
from utils.checkpoint import save_checkpoint
from utils.errors import UserError

SHAPE = (2, 8, 8)


def write(path, masked: bool = False, **changes):
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 2, hidden_dim=16)
    if masked:
        attach_masks(model, "head")
        set_mask_mode(model, "fixed")
    args = argparse.Namespace(arch="mlp", data="digits", data_seed=0)
    content = checkpoint_content(model, vars(args), {"hidden_dim": 16, "input_shape": list(SHAPE)}, 2)
    return save_checkpoint(path, {**content, **changes}), model


def test_load_model_rebuilds_the_saved_model(tmp_path):
    path, model = write(tmp_path / "erm.pt")
    loaded = load_model(path, Expect(data="digits", arch="mlp", data_settings={"data_seed": 0}, input_shape=SHAPE,
                                     n_classes=2, dense=True))
    x = torch.randn(3, *SHAPE)
    assert torch.equal(model.eval()(x), loaded.model.eval()(x))
    assert loaded.checkpoint["arch"] == "mlp"


def test_a_pruned_checkpoint_loads_with_its_fixed_mask_unless_a_dense_one_is_expected(tmp_path):
    path, model = write(tmp_path / "prusc.pt", masked=True)
    loaded = load_model(path)
    x = torch.randn(3, *SHAPE)
    assert torch.equal(model.eval()(x), loaded.model.eval()(x))
    with pytest.raises(UserError, match="is already pruned"):
        load_model(path, Expect(dense=True))


@pytest.mark.parametrize("expect, needle", [
    (Expect(data="cmnist"), "was trained on data 'digits', but --data is 'cmnist'"),
    (Expect(arch="cnn"), "holds architecture 'mlp', but --arch is 'cnn'"),
    (Expect(data_settings={"data_seed": 3}), "was trained with --data_seed 0, but this run has --data_seed 3"),
    (Expect(data="digits", input_shape=(3, 8, 8)), "expects inputs (2, 8, 8) and 2 classes, but --data digits gives "
                                                   "(3, 8, 8) and 2"),
    (Expect(n_classes=5), "expects inputs (2, 8, 8) and 2 classes, but the data gives (2, 8, 8) and 5"),
    (Expect(data="cmnist", flag="--cluster_checkpoint"), "--cluster_checkpoint"),
])
def test_each_check_fails_with_one_line_naming_the_flag_and_file(tmp_path, expect, needle):
    path, _ = write(tmp_path / "erm.pt")
    with pytest.raises(UserError) as caught:
        load_model(path, expect)
    message = str(caught.value)
    assert needle in message and str(path) in message and expect.flag in message
    assert "\n" not in message


def test_weights_that_do_not_fit_their_architecture_name_the_file(tmp_path):
    path, _ = write(tmp_path / "edited.pt", arch_args={"hidden_dim": 32, "input_shape": list(SHAPE)})
    assert checked_checkpoint(path, Expect())["arch_args"]["hidden_dim"] == 32  # the checks need no model
    with pytest.raises(UserError, match=r"--checkpoint .*edited.pt weights do not fit architecture 'mlp'") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_the_file_checks_come_first(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        load_model(tmp_path / "folder", Expect(data="digits"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="could not be read as a checkpoint"):
        load_model(tmp_path / "junk.pt", Expect(data="digits"))
