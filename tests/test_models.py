import pytest
import torch
import torchvision
from torch import nn

from selfsup.errors import SelfsupError
from selfsup.models import (STAGES, Backbone, HeadTrunk, StagedBackbone, build_backbone, mlp, prefers_channels_last,
                            trunk_of)
from selfsup.models.backbones import OnePixelSafeConv2d


@pytest.mark.parametrize("name, width, features", [("resnet18", 8, 64), ("resnet50", 4, 128), ("toy", 8, 32)])
def test_backbone_contract(name, width, features):
    net = build_backbone(name, in_channels=1, image_size=16, width=width)
    x = torch.randn(2, 1, 16, 16)
    assert net.num_features == features and net(x).shape == (2, features)
    stages = net.forward_stages(x)
    assert tuple(stages) == STAGES == net.stage_names
    assert all(v.ndim == 4 and v.shape[0] == 2 for v in stages.values())
    # the last stage pooled is the feature vector
    assert torch.allclose(stages["res5"].mean((2, 3)), net(x), atol=1e-5)
    assert isinstance(net, StagedBackbone) and set(net.stage_prefixes()) == set(STAGES)


def test_the_contract_is_written_down_and_trunks_unwrap_to_their_backbone():
    resnet, vit = build_backbone("resnet18", 1, 16, width=8), build_backbone("vit_tiny", 1, 16)
    assert isinstance(vit, Backbone) and not isinstance(vit, StagedBackbone)  # a ViT has tokens, not stages
    trunk = HeadTrunk(resnet, mlp(resnet.num_features, 32, 16, num_layers=3), 1)
    assert trunk_of(trunk) is resnet and trunk_of(resnet) is resnet
    assert prefers_channels_last(trunk) and not prefers_channels_last(vit)


def test_small_stem_keeps_resolution_and_big_stem_downsamples():
    small = build_backbone("resnet18", 3, 32, width=8)                  # auto: <= 64 px -> small stem
    large = build_backbone("resnet18", 3, 224, width=8)
    x = torch.randn(2, 3, 32, 32)
    assert small.forward_stages(x)["conv1"].shape[-1] == 32
    assert large.forward_stages(x)["conv1"].shape[-1] == 8              # stride 2 conv + max-pool
    assert isinstance(small.net.maxpool, nn.Identity) and small.net.conv1.kernel_size == (3, 3)


def test_width_64_is_torchvision_resnet18_exactly():
    ours = build_backbone("resnet18", 3, 224, small_stem=False, width=64).net
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_rebuilt_layers_get_torchvision_initialisation():
    net = build_backbone("resnet18", 1, 28, width=16).net
    assert torch.all(net.bn1.weight == 1) and torch.all(net.layer1[0].bn1.bias == 0)
    fan_out = net.layer1[0].conv1.weight[0].numel() // net.layer1[0].conv1.in_channels * \
        net.layer1[0].conv1.out_channels
    assert net.layer1[0].conv1.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)


def test_strided_convolutions_run_a_one_pixel_input_at_stride_one():
    """CPU bf16 convolutions at stride 2 on a 1x1 input return uninitialised memory in the weight gradient's border
    taps (torch 2.14's oneDNN: nonsense in 19 calls of 20 here, non-finite in some; CPC's 4 px patches met it): the
    backbones' strided convolutions sidestep it."""
    net = build_backbone("resnet18", 1, 16, width=8).net
    assert type(net.layer4[0].conv1) is OnePixelSafeConv2d and type(net.layer4[0].downsample[0]) is OnePixelSafeConv2d
    assert type(net.layer4[0].conv2) is nn.Conv2d and type(net.conv1) is nn.Conv2d  # stride 1: untouched
    assert type(build_backbone("toy", 1, 16).stages["res3"][0]) is OnePixelSafeConv2d
    torch.manual_seed(0)
    for _ in range(10):
        conv = nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False)
        conv.__class__ = OnePixelSafeConv2d
        x = torch.randn(784, 64, 1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        out.float().sum().backward()
        assert torch.isfinite(conv.weight.grad).all()
        border = conv.weight.grad.clone()
        border[:, :, 1, 1] = 0
        assert torch.all(border == 0)  # only the centre tap sees the pixel
        assert torch.allclose(out.float(), nn.functional.conv2d(x, conv.weight, stride=2, padding=1), atol=0.1)


def test_unknown_backbone_and_bad_width():
    with pytest.raises(SelfsupError, match="did you mean 'resnet18'"):
        build_backbone("resnet81", 3, 32)
    with pytest.raises(SelfsupError, match="width must be positive"):
        build_backbone("resnet18", 3, 32, width=0)


def test_mlp_layers_norms_and_biases():
    head = mlp(8, 16, 4, num_layers=3)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].bias is None and head[-1].bias is not None
    plain = mlp(8, 16, 4, batch_norm=False)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"] and plain[0].bias is not None
    barlow = mlp(8, 16, 4, last_batch_norm=True)
    assert isinstance(barlow[-1], nn.BatchNorm1d) and not barlow[-1].affine and barlow[-2].bias is None
    assert head(torch.randn(5, 8)).shape == (5, 4)


# ---------------------------------------------------------------- ViT and registers

def _vit(**kw):
    torch.manual_seed(0)
    return build_backbone("vit_tiny", 3, 16, **kw)


def test_vit_registers_join_the_tokens_and_are_dropped_at_the_output():
    x = torch.randn(2, 3, 16, 16)
    plain, registered = _vit(patch_size=4), _vit(patch_size=4, registers=3)
    assert plain.forward_tokens(x).shape == (2, 1 + 16, 192)
    assert registered.forward_tokens(x).shape == (2, 1 + 3 + 16, 192)
    parts = registered.tokens(x)
    assert parts["registers"].shape == (2, 3, 192) and parts["patches"].shape == (2, 16, 192)
    assert registered(x).shape == plain(x).shape == (2, 192)
    assert torch.equal(registered(x), parts["cls"])
    # The registers take part in attention: the [CLS] output depends on them.
    with torch.no_grad():
        changed = registered(x)
        registered.registers.add_(1.0)
        assert not torch.allclose(changed, registered(x))


def test_vit_mean_pool_returns_the_mean_of_the_normed_patch_tokens_alone():
    x = torch.randn(2, 3, 16, 16)
    pooled = _vit(patch_size=4, registers=2, pool="mean")
    parts = pooled.tokens(x)
    assert torch.allclose(pooled(x), parts["patches"].mean(1), atol=1e-6)
    assert not torch.allclose(pooled(x), parts["cls"])
    assert pooled.arch["pool"] == "mean" and "pool" not in _vit(patch_size=4).arch  # old arches unchanged
    # Pooling changes the output only: the same seed gives the same weights as a [CLS] ViT.
    assert all(torch.equal(a, b) for a, b in zip(pooled.state_dict().values(),
                                                 _vit(patch_size=4, registers=2).state_dict().values()))


def test_vit_attention_maps_are_row_stochastic_over_all_tokens():
    vit = _vit(patch_size=4, registers=2)
    x = torch.randn(2, 3, 16, 16)
    maps = vit.attention_maps(x)
    assert maps.shape == (2, 3, 1 + 2 + 16, 1 + 2 + 16)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 3, 19), atol=1e-5)
    # The explicit attention used for the maps gives the fused kernel's output.
    assert vit.blocks[-1].attn.attention is None and not vit.blocks[-1].attn.keep_attention
    vit.blocks[-1].attn.keep_attention = True
    explicit = vit(x)
    vit.blocks[-1].attn.keep_attention = False
    assert torch.allclose(explicit, vit(x), atol=1e-5)


def test_vit_attention_on_a_cpu_in_bf16_is_the_explicit_product_and_elsewhere_the_fused_kernel(monkeypatch):
    """On a CPU in bf16 the fused kernel was 4-8.8x slower (RESULTS 33): the explicit product is taken there,
    and gives the fused kernel's output to bf16 rounding; fp32 (and a GPU) keep the fused kernel."""
    from selfsup.models import vit as vit_module

    fused, rule = torch.nn.functional.scaled_dot_product_attention, vit_module.fused_attention_is_faster
    calls = []

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[0].dtype)
        return fused(*args, **kwargs)

    monkeypatch.setattr(vit_module.F, "scaled_dot_product_attention", counted)
    model, x = _vit(patch_size=4), torch.randn(2, 3, 16, 16)
    reference = model(x)
    assert calls == [torch.float32] * len(model.blocks)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert calls == []  # (the output is the final LayerNorm's, fp32 under autocast)
    monkeypatch.setattr(vit_module, "fused_attention_is_faster", lambda q: True)  # the fused kernel, as before
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_fused = model(x)
    assert len(calls) == len(model.blocks)
    # One rounding apart: the two bf16 paths agree as closely as either does with fp32.
    assert (low.float() - low_fused.float()).abs().max() <= 2 * (low_fused.float() - reference).abs().max()
    assert torch.nn.functional.cosine_similarity(low.float(), low_fused.float()).min() > 0.999
    q = torch.empty(1)
    assert rule(q) and not rule(q.bfloat16()) and rule(q.half())  # fp16 on a CPU: not measured, not changed
    assert rule(torch.empty(1, dtype=torch.bfloat16, device="meta"))  # not a CPU


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    from selfsup.models.vit import DropPath

    torch.manual_seed(0)
    drop, x = DropPath(0.25), torch.randn(4000, 3, 5) + 2
    out = drop(x)
    kept = (out != 0).flatten(1).any(1)
    assert torch.equal((out != 0).flatten(1).all(1), kept)  # a sample is dropped whole or not at all
    assert torch.allclose(out[kept], x[kept] / 0.75) and abs(kept.float().mean().item() - 0.75) < 0.03
    assert drop.eval()(x) is x and DropPath(0.0).train()(x) is x


def test_vit_takes_other_image_sizes_by_interpolating_its_position_embedding():
    vit = _vit(patch_size=4)
    assert vit(torch.randn(2, 3, 8, 8)).shape == (2, 192)     # DINO's local crops
    assert vit._position_for(4, 4) is vit.position


def test_vit_settings_are_checked():
    assert _vit().patch_size == 4                              # default for <= 32 px
    assert build_backbone("vit_small", 1, 96).patch_size == 8
    with pytest.raises(SelfsupError, match="must divide the image size 16"):
        _vit(patch_size=5)
    with pytest.raises(SelfsupError, match="a ViT's size is its name"):
        build_backbone("vit_tiny", 3, 16, width=32)
    with pytest.raises(SelfsupError, match="ViT settings"):
        build_backbone("resnet18", 3, 16, registers=4)
    with pytest.raises(SelfsupError, match="ViT settings"):
        build_backbone("resnet18", 3, 16, pool="mean")
    with pytest.raises(SelfsupError, match="backbone.pool must be one of cls, mean, got 'max'"):
        _vit(pool="max")
