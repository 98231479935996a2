import torch

from data.digits import make_colored_digits


def test_contract_and_split_sizes():
    splits = make_colored_digits(0.95, 0.0, data_seed=0)
    assert sum(len(s) for s in splits.values()) == 1797
    train = splits["train"]
    x, y, a, idx = train[5]
    assert x.shape == (3, 8, 8) and idx == 5
    assert y == int(train.y[5]) and a == int(train.a[5])
    assert train.n_classes == 2 and train.n_attrs == 2
    # strokes drawn in the colour's RGB: red only for colour 0, blue only for colour 1, green in both
    red, green, blue = x
    assert torch.allclose(green * 2, red + blue)
    assert (red.abs().sum() > 0) == (a == 0) and (blue.abs().sum() > 0) == (a == 1)
    assert torch.equal(train.groups, train.y * 2 + train.a)


def test_train_colour_follows_ratio_and_eval_colour_is_balanced():
    splits = make_colored_digits(0.95, 0.0, data_seed=1)
    train = splits["train"]
    agreement = float((train.y == train.a).float().mean())
    assert 0.92 < agreement < 0.98
    for name in ("val", "test"):
        s = splits[name]
        for cls in (0, 1):
            colours = s.a[s.y == cls]
            assert abs(int((colours == 0).sum()) - int((colours == 1).sum())) <= 1


def test_same_data_seed_same_data_and_label_noise():
    s1 = make_colored_digits(0.9, 0.2, data_seed=3)["train"]
    s2 = make_colored_digits(0.9, 0.2, data_seed=3)["train"]
    assert torch.equal(s1.images, s2.images) and torch.equal(s1.y, s2.y)
    clean = make_colored_digits(0.9, 0.0, data_seed=3)["train"]
    flipped = float((clean.y != s1.y).float().mean())
    assert 0.12 < flipped < 0.28
