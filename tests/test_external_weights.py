"""External weights evaluated right: a timm / torchvision state dict is normalised the way its
weights were trained (timm's pretrained_cfg, or --mean/--std), not with the evaluation data's
statistics, and RGB weights on grayscale data see the channel repeated. Every model is built with
pretrained=False: nothing downloads."""

import pytest
import timm
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.cli import main
from sslbench.benchmark.datasets import dataset_info
from sslbench.benchmark.encoders import GrayToRGB, fit_to_data, load_any_encoder, timm_input_config
from sslbench.benchmark.errors import ConfigError
from sslbench.results.aggregate import load_runs

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def timm_resnet18(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def test_timm_names_give_their_pretrained_weights_input():
    assert timm_input_config("resnet18")[:3] == (*IMAGENET, 224)
    assert timm_input_config("vit_small_patch16_224")[:2] == ((0.5,) * 3, (0.5,) * 3)
    dino = timm_input_config("vit_small_patch16_224.dino")
    assert dino[:2] == IMAGENET and dino[3] == "vit_small_patch16_224.dino"
    assert timm_input_config("vit_base_patch16_384")[2] == 384
    assert timm_input_config("resnet18-small") is None  # sslbench's stem: no timm weights exist
    assert timm_input_config("small-cnn") is None


def test_a_timm_state_dict_uses_timm_normalisation_not_the_data(timm_resnet18):
    encoder, source = load_any_encoder(timm_resnet18, backbone="resnet18", image_size=32)
    assert (source.mean, source.std) == IMAGENET and "pretrained_cfg of resnet18.a1_in1k" in source.normalization
    cifar = dataset_info("cifar10")
    same, (mean, std, size), where = fit_to_data(encoder, source, 3, tuple(cifar.mean), tuple(cifar.std))
    assert same is encoder and (mean, std, size) == (*IMAGENET, 32)
    assert where.startswith("mean 0.485,0.456,0.406 std 0.229,0.224,0.225, timm pretrained_cfg")
    # --mean/--std win
    _, given = load_any_encoder(timm_resnet18, backbone="resnet18", image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert (given.mean, given.std, given.normalization) == ((0.5,) * 3, (0.25,) * 3, "--mean/--std")


def test_mean_and_std_are_checked(timm_resnet18, tmp_path):
    with pytest.raises(ConfigError, match="Only one of --mean and --std"):
        load_any_encoder(timm_resnet18, backbone="resnet18", mean=IMAGENET[0])
    with pytest.raises(ConfigError, match="need 3 values"):
        load_any_encoder(timm_resnet18, backbone="resnet18", mean=(0.5,), std=(0.5,))


def test_an_sslbench_backbone_state_dict_falls_back_to_the_data(tmp_path):
    encoder, _ = build_backbone("small-cnn", 3, 16)
    torch.save(encoder.state_dict(), tmp_path / "cnn.pt")
    loaded, source = load_any_encoder(tmp_path / "cnn.pt", backbone="small-cnn", image_size=16)
    assert source.mean is None and source.normalization == ""
    info = dataset_info("synthetic-cifar")
    _, (mean, std, _), where = fit_to_data(loaded, source, 3, tuple(info.mean), tuple(info.std))
    assert (mean, std) == (tuple(info.mean), tuple(info.std)) and "evaluation data's" in where


def test_rgb_weights_on_grayscale_data_repeat_the_channel(timm_resnet18):
    encoder, source = load_any_encoder(timm_resnet18, backbone="resnet18", image_size=32)
    info = dataset_info("synthetic")
    wrapped, (mean, std, _), where = fit_to_data(encoder, source, 1, tuple(info.mean), tuple(info.std))
    assert isinstance(wrapped, GrayToRGB) and (mean, std) == ((0.0,), (1.0,)) and "repeated to RGB" in where
    x = torch.rand(2, 1, 32, 32)
    expected = encoder((x.repeat(1, 3, 1, 1) - torch.tensor(IMAGENET[0]).view(1, 3, 1, 1))
                       / torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.allclose(wrapped(x), expected, atol=1e-5)
    assert set(wrapped.state_dict()) == {f"encoder.{k}" for k in encoder.state_dict()}  # no extra tensors
    # detection builds its FPN on the wrapped CNN through the dense-branch hook
    from sslbench.protocols.detection import build_fpn_backbone

    fpn = build_fpn_backbone(wrapped, channels=1, fpn_channels=16)
    with torch.no_grad():
        maps = fpn(torch.rand(1, 1, 64, 64))
    assert all(m.shape[1] == 16 for m in maps.values())
    # grayscale weights on RGB data stay an error
    _, gray = load_any_encoder(_gray_weights(), backbone="small-cnn", in_chans=1, image_size=16)
    with pytest.raises(ConfigError, match="1-channel images but the data has 3"):
        fit_to_data(encoder, gray, 3, (0.5,) * 3, (0.25,) * 3)


def _gray_weights():
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "gray.pt"
    torch.save(build_backbone("small-cnn", 1, 16)[0].state_dict(), path)
    return path


def test_eval_cli_on_grayscale_data_with_timm_rgb_weights(timm_resnet18, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    argv = ["eval", str(timm_resnet18), "--backbone", "resnet18", "--image-size", "32", "--dataset", "synthetic",
            "--protocol", "knn-k20-t0.07", "--no-progress", "--device", "cpu", "--tracking-uri", uri]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "knn-k20-t0.07 on synthetic: top1" in out.out and "note:" not in out.err
    run = load_runs(tracking_uri=uri, kind="eval").iloc[0]
    assert run.source_normalization.startswith("mean 0.485,0.456,0.406 std 0.229,0.224,0.225")
    assert "repeated to RGB" in run.source_normalization
    # an sslbench backbone's state dict: the data's statistics, said on stderr
    torch.save(build_backbone("small-cnn", 1, 16)[0].state_dict(), tmp_path / "cnn.pt")
    argv = ["eval", str(tmp_path / "cnn.pt"), "--backbone", "small-cnn", "--in-chans", "1", "--image-size", "16",
            "--dataset", "synthetic", "--protocol", "knn-k20-t0.07", "--no-progress", "--no-mlflow", "--device", "cpu"]
    assert main(argv) == 0
    assert "note: 'small-cnn' weights do not say how their inputs were normalised: using synthetic's" in \
        capsys.readouterr().err
    assert main(argv + ["--mean", "0.5"]) == 2
    assert "Only one of --mean and --std" in capsys.readouterr().err
