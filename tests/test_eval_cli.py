"""`sslbench eval` on any weights file: sslbench checkpoints, plain timm / torchvision state dicts,
transfers to another dataset (both datasets recorded), labelled-subset files, and the errors for a
checkpoint of another backbone."""

import pandas as pd
import pytest
import torch
import torchvision

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.cli import main
from sslbench.benchmark.encoders import find_state_dict, load_any_encoder, match_state_dict
from sslbench.benchmark.engine import pretrain
from sslbench.benchmark.errors import CheckpointError, ConfigError
from sslbench.benchmark.recipes import resolve
from sslbench.results.aggregate import aggregate, load_runs, transfer_protocol

TINY = ["data.dataset=synthetic", "data.batch_size=32", "method.proj_hidden_dim=64", "method.proj_dim=32",
        "augment=simclr-small", "train.epochs=1"]


def _torchvision_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(trunk(x), 1), 1)


@pytest.mark.parametrize("wrap", ["plain", "moco", "dino"])
def test_torchvision_state_dict_loads_into_the_timm_backbone(tmp_path, wrap):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    sd = model.state_dict()
    blob = {"plain": sd,
            "moco": {"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}, "epoch": 200},
            "dino": {"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "student": {"x": torch.zeros(1)}}}[wrap]
    path = tmp_path / "weights.pt"
    torch.save(blob, path)
    encoder, source = load_any_encoder(path, backbone="resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x), _torchvision_features(model, x), atol=1e-5)
    assert source.kind == "state_dict" and source.dropped == ("fc.bias", "fc.weight")
    assert source.prefix == {"plain": "", "moco": "module.encoder_q.", "dino": "backbone."}[wrap]
    assert len(source.sha256) == 64
    assert source.mean == (0.485, 0.456, 0.406)  # ImageNet's, from timm's pretrained_cfg of resnet18


def test_weights_of_another_backbone_are_a_clear_error(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="another backbone") as err:
        load_any_encoder(path, backbone="resnet34")
    assert "missing" in str(err.value)
    with pytest.raises(CheckpointError, match=r"conv1.weight: file \(64, 3, 7, 7\), backbone \(64, 1, 7, 7\)"):
        load_any_encoder(path, backbone="resnet18", in_chans=1)
    with pytest.raises(ConfigError, match="--backbone"):
        load_any_encoder(path)
    extra = {**torchvision.models.resnet18().state_dict(), "layer5.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="not in it"):
        match_state_dict(extra, build_backbone("resnet18", 3, 32)[0].state_dict(), path=path, backbone="resnet18")
    torch.save({"epoch": 3, "args": "x"}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        find_state_dict(torch.load(tmp_path / "empty.pt", weights_only=True), tmp_path / "empty.pt")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    uri = f"sqlite:///{root}/mlruns.db"
    from sslbench.benchmark.engine import Tracking

    result = pretrain(resolve("simclr-quick", TINY), root / "run", tracking=Tracking(uri), progress=False)
    return result, uri


def test_sslbench_checkpoint_of_another_backbone_is_refused(tiny_run):
    result, _ = tiny_run
    with pytest.raises(CheckpointError, match="'small-cnn' encoder, not 'resnet18'"):
        load_any_encoder(result.checkpoint, backbone="resnet18")
    encoder, source = load_any_encoder(result.checkpoint, backbone="small-cnn")
    assert source.kind == "sslbench" and source.dataset == "synthetic" and source.mlflow_run_id == result.run_id
    for a, b in zip(encoder.state_dict().values(), result.encoder.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())


def test_transfer_records_both_datasets_and_links_the_pretraining_run(tiny_run, capsys):
    result, uri = tiny_run
    argv = ["eval", str(result.checkpoint), "--protocol", "knn-k20-t0.07", "--dataset", "fashion-mnist-mini",
            "--no-progress", "--tracking-uri", uri, "--device", "cpu"]
    assert main(argv) == 0
    assert "knn-k20-t0.07 on fashion-mnist-mini: top1" in capsys.readouterr().out
    runs = load_runs(tracking_uri=uri, kind="eval")
    run = runs[runs.protocol == "knn-k20-t0.07"].iloc[0]
    assert (run.dataset, run.eval_dataset, run.transfer) == ("synthetic", "fashion-mnist-mini", "true")
    assert run.parent_run_id == result.run_id
    assert 10 < run.top1 <= 100  # 10 classes: better than chance from a 16 px synthetic encoder
    agg = aggregate(runs, metrics=["top1"])
    assert "knn-k20-t0.07@fashion-mnist-mini" in set(agg.protocol)


def test_plain_state_dict_is_evaluated_and_tagged_by_its_hash(tmp_path, capsys):
    torch.manual_seed(0)
    encoder, _ = build_backbone("small-cnn", 1, 16)
    path = tmp_path / "published.pth"
    torch.save({"model": {f"module.{k}": v for k, v in encoder.state_dict().items()}}, path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    argv = ["eval", str(path), "--backbone", "small-cnn", "--in-chans", "1", "--image-size", "16",
            "--dataset", "synthetic", "--protocol", "knn-k20-t0.07", "--no-progress", "--tracking-uri", uri]
    assert main(argv) == 0
    run = load_runs(tracking_uri=uri, kind="eval").iloc[0]
    assert run.method == "external" and run.backbone == "small-cnn" and run.source_file == "published.pth"
    assert len(run.source_sha256) == 64 and pd.isna(run.parent_run_id)
    assert main(argv[:1] + [str(path), "--protocol", "knn-k20-t0.07", "--dataset", "synthetic"]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_subset_files_are_deterministic_and_checked_against_the_dataset(tmp_path, tiny_run, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert main(["subset", "--dataset", "fashion-mnist-mini", "--fraction", "0.01", "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    result, _ = tiny_run
    capsys.readouterr()
    # A split file made for fashion-mnist-mini, used on the synthetic pretraining data.
    argv = ["eval", str(result.checkpoint), "--protocol", "semisup-1pct", "--subset", str(a), "--no-progress"]
    assert main(argv) == 2
    assert "is for 'fashion-mnist-mini' (10000 training images), not 'synthetic'" in capsys.readouterr().err


def test_transfer_protocol_marks_only_runs_on_another_dataset():
    runs = pd.DataFrame({"protocol": ["linear", "linear", None, "knn"],
                         "dataset": ["a", "a", "a", "a"],
                         "eval_dataset": ["a", "b", None, None]})
    assert transfer_protocol(runs).tolist()[:2] == ["linear", "linear@b"]
    assert transfer_protocol(runs).tolist()[3] == "knn"


def test_protocols_never_import_methods():
    """`protocols/` judges encoders, never methods: importing every protocol module (and running
    the registry) leaves sslbench.methods unimported."""
    import subprocess
    import sys

    code = ("import sys, sslbench.protocols as p, sslbench.protocols.semisup, sslbench.protocols.detection, "
            "sslbench.protocols.detection_data, sslbench.protocols.detection_metrics, "
            "sslbench.protocols.diagnostics; [p.get_protocol(n) for n in p.list_protocols()]; "
            "print(sorted(m for m in sys.modules if m.startswith('sslbench.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_semisup_from_simclrv2_projector_layer(tmp_path):
    """SimCLR v2 fine-tunes from the first projector layer: the module is the encoder plus that
    layer (output width = the projector's hidden width), built from the checkpoint's method; a
    method without such a projector is a clear error."""
    from sslbench.benchmark.datasets import load_dataset
    from sslbench.benchmark.evaluate import finetune_module
    from sslbench.protocols import SemiSupSpec, evaluate

    tiny = ["data.dataset=synthetic", "data.batch_size=32", "augment=simclr-small", "train.epochs=1",
            "method.proj_hidden_dim=48", "method.proj_dim=16"]
    result = pretrain(resolve("simclrv2-quick", tiny), tmp_path / "v2", progress=False)
    module = finetune_module(result.checkpoint, 1)
    with torch.no_grad():
        assert module(torch.zeros(2, 1, 16, 16)).shape == (2, 48)
    spec = SemiSupSpec(name="semisup-proj1", version=1, fraction=None, per_class=8, val_per_class=8,
                       from_projector_layer=1, epochs=1, lrs=(0.05,))
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    encoder = result.encoder.cpu().eval()
    with pytest.raises(ConfigError, match="projector"):
        evaluate(encoder, train, test, [spec], progress=False)
    (res,) = evaluate(encoder, train, test, [spec], progress=False, finetune_encoder=module)
    assert res.params["feature_dim"] == 48.0 and 0 <= res.metrics["top1"] <= 100
    simclr = pretrain(resolve("simclr-quick", TINY), tmp_path / "v1", progress=False)
    with pytest.raises(ConfigError, match="no projector layers"):
        finetune_module(simclr.checkpoint, 1)
