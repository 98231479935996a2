import pytest
import torch
import torchvision

from models import build_model
from utils.errors import UserError


@pytest.mark.parametrize("arch, shape", [("mlp", (2, 8, 8)), ("cnn", (2, 28, 28)), ("resnet18", (3, 32, 32))])
def test_every_model_has_features_and_head(arch, shape):
    model = build_model(arch, shape, 3).eval()
    x = torch.randn(4, *shape)
    feats = model.features(x)
    assert feats.shape == (4, model.feature_dim)
    assert torch.allclose(model(x), model.head(feats))


def test_resnet_loads_local_weights_offline(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", (3, 32, 32), 2, pretrained_path=str(tmp_path / "r18.pth"))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_resnet_rejects_weights_of_another_depth(tmp_path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(UserError, match="does not match"):
        build_model("resnet18", (3, 32, 32), 2, pretrained_path=str(tmp_path / "r50.pth"))


def test_imagenet_offline_message(monkeypatch):
    def offline(weights=None):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(UserError, match="--pretrained_path"):
        build_model("resnet18", (3, 32, 32), 2, imagenet=True)
