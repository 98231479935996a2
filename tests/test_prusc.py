"""PruSC end to end: modes, ablations, invariants of the pruning step, and bad input."""
import copy
import json

import pytest
import torch

import run
from benchmarks import magnitude_mask, mask_agreement
from cluster.io import write_clusters
from conftest import read_results
from data.digits import make_colored_digits
from models import build_model
from models.factory import checkpoint_content, load_model
from models.masking import attach_masks, density_report, iter_masks
from training.prune import PruneConfig, learn_masks
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.options import from_args
from utils.runtime import seed_everything

FAST = ("--data", "digits", "--device", "cpu", "--epochs", "3", "--pruning_ep", "2", "--retrain_ep", "2",
        "--per_class")


@pytest.fixture(scope="module")
def erm_dir(digits_erm):
    """The shared reference model: 3 ERM epochs, as ``FAST`` trains."""
    return digits_erm


def test_pruning_step_never_changes_weights_or_batchnorm_statistics():
    splits = make_colored_digits(0.95, 0.0, 0)
    train = splits["train"].subset(torch.arange(128))
    model = build_model("cnn", train.input_shape, 2)
    model.train()
    model(torch.randn(32, *train.input_shape))  # non-trivial running statistics
    before = copy.deepcopy(model.state_dict())
    args = run.parse_args(["--pruning_ep", "1", "--batch_size", "32", "--lambda_sparse", "1e-6"])
    learn_masks(model, train, train.y * 2 + train.a, from_args(PruneConfig, args), args.batch_size, torch.device("cpu"),
                seed_everything(0))
    after = model.state_dict()
    for key, value in before.items():
        moved = key.replace(".weight", ".parametrizations.weight.original") if key not in after else key
        assert torch.equal(value, after[moved]), key
    logits = [v for k, v in after.items() if k.endswith(".logits")]
    assert logits and any(bool((v != 3.0).any()) for v in logits)  # the mask did learn


def test_all_mode_reports_method_and_ablations(tmp_path, erm_dir, run_cli):
    rc, out, _ = run_cli("--mode", "all", *FAST, "--checkpoint", erm_dir / "erm.pt", "--out_dir", tmp_path,
                         "--methods", "erm,retrain_only,prusc_no_con,prusc,oracle_group_balanced")
    assert rc == 0
    res = read_results(tmp_path)
    assert list(res["methods"]) == ["erm", "retrain_only", "prusc_no_con", "prusc", "oracle_group_balanced"]
    assert res["methods"]["oracle_group_balanced"]["uses_group_labels"] is True
    assert res["splits"] == res["methods"]["prusc"]["splits"]
    assert 0.0 < res["density"]["overall"] <= 1.0
    assert set(res["density"]["per_layer"]) == {"body.1", "body.3", "head"}
    assert "no group labels" in res["methods"]["prusc"]["selection"]
    assert res["methods"]["prusc"]["uses_group_labels"] is False
    assert all(name in out for name in res["methods"])
    assert (tmp_path / "clusters.csv").exists() and (tmp_path / "prusc.pt").exists()


def test_prune_then_evaluate_round_trip(tmp_path, erm_dir, run_cli):
    assert run_cli("--mode", "cluster", "--data", "digits", "--per_class", "--checkpoint", erm_dir / "erm.pt",
                   "--out_dir", tmp_path / "clusters")[0] == 0
    rc, _, _ = run_cli("--mode", "prune", *FAST, "--checkpoint", erm_dir / "erm.pt",
                       "--clusters", tmp_path / "clusters" / "clusters.csv", "--out_dir", tmp_path / "prune")
    assert rc == 0
    pruned = read_results(tmp_path / "prune")
    ckpt = load_checkpoint(tmp_path / "prune" / "prusc.pt")
    assert ckpt["mask_logits"] and "density" in pruned
    rc, _, _ = run_cli("--mode", "evaluate", "--data", "digits", "--checkpoint", tmp_path / "prune" / "prusc.pt",
                       "--out_dir", tmp_path / "eval")
    assert rc == 0
    evaluated = read_results(tmp_path / "eval")
    assert evaluated["splits"]["test"] == pruned["splits"]["test"]  # val: prune reports its held-out half only
    assert evaluated["methods"]["checkpoint"]["val_samples"] == "the whole val split"
    assert evaluated["density"]["overall"] == pytest.approx(pruned["density"]["overall"])
    rc, _, _ = run_cli("--mode", "retrain", *FAST, "--checkpoint", tmp_path / "prune" / "prusc.pt",
                       "--clusters", tmp_path / "clusters" / "clusters.csv", "--out_dir", tmp_path / "retrain",
                       "--selection", "oracle")
    assert rc == 0
    retrained = read_results(tmp_path / "retrain")["methods"]["retrain_only"]
    assert "ORACLE" in retrained["selection"] and retrained["uses_group_labels"] is True


def test_clusters_of_other_data_are_refused(tmp_path, erm_dir, run_cli):
    other_train = make_colored_digits(0.95, 0.0, 5)["train"]
    write_clusters(tmp_path / "clusters.csv", other_train, other_train.a)
    rc, _, err = run_cli("--mode", "prune", *FAST, "--checkpoint", erm_dir / "erm.pt",
                         "--clusters", tmp_path / "clusters.csv", "--out_dir", tmp_path / "p")
    assert rc == 2 and "clusters.csv" in err and "label" in err


def test_a_wrong_clusters_file_is_refused_before_the_reference_trains_and_the_fixed_rerun_starts(tmp_path, run_cli):
    train = make_colored_digits(0.95, 0.0, 0)["train"]
    write_clusters(tmp_path / "short.csv", train.subset(torch.arange(10)), torch.zeros(10, dtype=torch.long))
    argv = ("--mode", "prune", *FAST, "--out_dir", tmp_path / "p")
    rc, out, err = run_cli(*argv, "--clusters", tmp_path / "short.csv")
    assert rc == 2 and "has 10 rows but the train split has" in err and "ERM epoch" not in out
    write_clusters(tmp_path / "good.csv", train, train.a)
    assert run_cli(*argv, "--clusters", tmp_path / "good.csv")[0] == 0  # the failed start left nothing to mix


@pytest.mark.parametrize("value, needle", [("50", "the model has 3 maskable layers (Conv2d/Linear); use all, or a "
                                                   "number up to 3"), ("last", "is not understood")])
def test_prune_layers_the_backbone_lacks_are_refused_before_the_reference_trains(tmp_path, run_cli, value, needle):
    rc, out, err = run_cli("--mode", "all", "--methods", "erm,prusc", *FAST, "--prune_layers", value,
                           "--out_dir", tmp_path)
    assert rc == 2 and needle in err and err.count("\n") == 1 and "ERM epoch" not in out, err


def test_negative_lambda_is_refused(tmp_path):
    with pytest.raises(SystemExit) as exc:
        run.main(["--mode", "prune", "--lambda_sparse", "-1", "--out_dir", str(tmp_path)])
    assert exc.value.code == 2


def test_an_emptied_layer_warns_and_the_rest_still_counts():
    model = build_model("cnn", (3, 28, 28), 2)
    attach_masks(model)
    name, mask = next(iter_masks(model))
    with torch.no_grad():
        mask.logits.fill_(-1.0)
    with pytest.warns(UserWarning, match=f"removed every weight of layer '{name}'"):
        report = density_report(model)
    assert report["per_layer"][name] == 0.0 and 0.0 < report["overall"] < 1.0


def test_a_mask_that_removes_every_weight_stops_with_one_line(tmp_path, erm_dir, run_cli):
    rc, _, err = run_cli("--mode", "prune", *FAST, "--checkpoint", erm_dir / "erm.pt", "--out_dir", tmp_path,
                         "--lambda_sparse", "100", "--lambda_con_prune", "0", "--lr_prune", "5", "--retrain_ep", "0")
    assert rc == 2 and "removed every weight (density 0)" in err and "--lambda_sparse" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results.json").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, erm_dir, run_cli, monkeypatch):
    import training.prune as prune

    calls = {"n": 0}
    real = prune.cluster_contrastive_loss

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] > 20 else loss  # the second epoch goes bad

    monkeypatch.setattr(prune, "cluster_contrastive_loss", poisoned)
    rc, _, err = run_cli("--mode", "prune", *FAST, "--checkpoint", erm_dir / "erm.pt", "--out_dir", tmp_path)
    assert rc == 2 and "nan" in err.lower() and "last good checkpoint" in err
    assert load_checkpoint(tmp_path / "prusc_pruned.pt")["mask_logits"]
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["local_imagenet_file", "no_imagenet"])
def test_original_celeba_command_shape(run_cli, tmp_path, weights):
    """python3 run.py --mode prune --data celebA --train_root_dir=<DIR> --imagenet --lambda_sparse 5e-8 ..."""
    import torchvision

    from fixtures import write_celeba

    root = tmp_path / "celeba"
    write_celeba(root, "kaggle")
    argv = ["--mode", "prune", "--data", "celebA", f"--train_root_dir={root}", "--lambda_sparse", "5e-8",
            "--pruning_ep=1", "--retrain_ep=1", "--epochs", "1", "--image_size", "32", "--batch_size", "8",
            "--lr_prune", "0.01",  # the fixture has 2 pruning steps: the automatic rate would be 3 and diverge
            "--device", "cpu", "--out_dir", tmp_path / "out"]
    if weights == "local_imagenet_file":
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
        argv += ["--imagenet", "--pretrained_path", tmp_path / "r18.pth"]
    rc, _, err = run_cli(*argv)
    assert rc == 0, err
    res = read_results(tmp_path / "out")
    assert res["arch"] == "resnet18" and res["args"]["lambda_sparse"] == 5e-8
    assert {k: g["n"] for k, g in res["splits"]["test"]["groups"].items()} == {
        f"y={y},a={a}": 2 for y in (0, 1) for a in (0, 1)}
    assert 0 < res["density"]["overall"] <= 1


def test_imagenet_flag_needs_a_resnet(run_cli, tmp_path):
    rc, _, err = run_cli("--mode", "erm", "--arch", "mlp", "--imagenet", "--out_dir", tmp_path)
    assert rc == 2 and "--arch resnet18" in err


def test_mask_agreement_compares_the_kept_mask_with_the_dense_model_on_the_runs_data(tmp_path, erm_dir, run_cli,
                                                                                     capsys):
    rc, _, _ = run_cli("--mode", "all", *FAST, "--checkpoint", erm_dir / "erm.pt", "--out_dir", tmp_path / "run",
                       "--methods", "erm,prusc")
    assert rc == 0
    assert mask_agreement.main([str(tmp_path / "run"), "--json", str(tmp_path / "agree.json")]) == 0
    assert "| prusc |" in capsys.readouterr().out
    (record,) = json.loads((tmp_path / "agree.json").read_text())
    erm_test = read_results(tmp_path / "run")["methods"]["erm"]["splits"]["test"]
    assert record["test"]["dense_worst_group_acc"] == erm_test["worst_group_acc"]  # the same data, the same model
    assert 0.0 <= record["test"]["changed"] <= 1.0 and record["dense"] == str(erm_dir / "erm.pt")
    assert mask_agreement.main([str(erm_dir)]) == 2
    assert "holds none of prusc_no_con_pruned.pt, prusc_pruned.pt" in capsys.readouterr().err
    assert mask_agreement.main([str(tmp_path / "run"), "--json", str(tmp_path / "agree.json")]) == 0  # its own file
    results = (tmp_path / "run" / "results.json").read_text()
    assert mask_agreement.main([str(tmp_path / "run"), "--json", str(tmp_path / "run" / "results.json")]) == 2
    assert "is not a records file of mask_agreement.py; nothing was written" in capsys.readouterr().err
    assert (tmp_path / "run" / "results.json").read_text() == results  # a finished result is never overwritten


def test_magnitude_mask_keeps_the_largest_weights_at_the_learned_masks_densities(tmp_path, erm_dir, capsys):
    loaded = load_model(erm_dir / "erm.pt")
    attach_masks(loaded.model)
    torch.manual_seed(0)
    for _, mask in iter_masks(loaded.model):
        mask.logits.data.normal_()  # about half kept, at random
    ckpt = loaded.checkpoint
    masked = save_checkpoint(tmp_path / "learned.pt", checkpoint_content(loaded.model, ckpt["args"], ckpt["arch_args"],
                                                                         ckpt["n_classes"]))
    assert magnitude_mask.main([str(masked), str(tmp_path / "magnitude.pt")]) == 0
    assert "| all |" in capsys.readouterr().out
    learned, magnitude = load_checkpoint(masked), load_checkpoint(tmp_path / "magnitude.pt")
    for name, logits in magnitude["mask_logits"].items():
        weight, keep = learned["state_dict"][f"{name}.weight"].abs(), logits >= 0
        assert int(keep.sum()) == int((learned["mask_logits"][name] >= 0).sum())  # the same density per layer
        assert weight[keep].min() >= weight[~keep].max()  # and the largest weights
    assert magnitude_mask.main([str(masked), str(tmp_path / "magnitude.pt")]) == 2  # never overwrites
    assert magnitude_mask.main([str(erm_dir / "erm.pt"), str(tmp_path / "other.pt")]) == 2
    assert "holds no mask logits" in capsys.readouterr().err
