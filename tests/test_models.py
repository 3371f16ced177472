"""Tests of the networks: layouts (keys, shapes), output sizes, forward semantics against a hand-written functional
reference, the classifier's two-branch quirk, BatchNorm behaviour and the optimizer parameter listing.

Expected values are written out here independently of the model code (enumerations, formulas, F.conv2d chains).
The real ResNet-101 is built once (module fixture) for its key list; everything else uses small variants.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model as model_pkg
from model import DeeplabMulti, DeeplabVGG, FCDiscriminator, Res_Deeplab, build_model, model_outputs
from model.deeplab_multi import parameter_multiplicity
from model.resnet import Classifier_Module

TINY = (1, 1, 1, 1)
DILATIONS = (6, 12, 18, 24)
PLANES = (64, 128, 256, 512)


# ---- independent expectations -----------------------------------------------------------------------------------


def deeplab_out_size(n: int) -> int:
    """Spatial size after the DeepLab-v2 ResNet (written from the layer definitions, not from the model)."""
    n = (n + 2 * 3 - 7) // 2 + 1  # conv1: 7x7, stride 2, padding 3
    before = n
    n = math.ceil((n + 2 * 1 - 3) / 2) + 1  # max-pool 3x3, stride 2, padding 1, ceil_mode
    if (n - 1) * 2 >= before + 1:  # ceil mode never starts a window in the right padding
        n -= 1
    n = (n - 1) // 2 + 1  # layer2's first 1x1 conv, stride 2
    return n  # layer3/layer4 and the classifiers keep the size (stride 1, padding = dilation)


def vgg_out_size(n: int) -> int:
    for _ in range(3):  # pool1..pool3, 2x2 stride 2, floor
        n //= 2
    return n


def disc_out_size(n: int) -> int:
    for _ in range(5):
        n = (n + 2 * 1 - 4) // 2 + 1
    return n


def bn_entries(name: str, c: int) -> list[tuple[str, tuple]]:
    return [
        (f"{name}.weight", (c,)),
        (f"{name}.bias", (c,)),
        (f"{name}.running_mean", (c,)),
        (f"{name}.running_var", (c,)),
        (f"{name}.num_batches_tracked", ()),
    ]


def expected_resnet_entries(layers, heads, num_classes) -> list[tuple[str, tuple]]:
    """(key, shape) of the Caffe DeepLab-v2 ResNet in state_dict order; ``heads`` = [(name, in_channels)]."""
    out = [("conv1.weight", (64, 3, 7, 7))] + bn_entries("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip(PLANES, layers), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            cin = inplanes if b == 0 else planes * 4
            out += [(f"{p}.conv1.weight", (planes, cin, 1, 1))] + bn_entries(f"{p}.bn1", planes)
            out += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + bn_entries(f"{p}.bn2", planes)
            out += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1))] + bn_entries(f"{p}.bn3", planes * 4)
            if b == 0:  # every layer's first block has a downsample branch
                out += [(f"{p}.downsample.0.weight", (planes * 4, cin, 1, 1))]
                out += bn_entries(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    for head, cin in heads:
        for i in range(4):
            out += [
                (f"{head}.conv2d_list.{i}.weight", (num_classes, cin, 3, 3)),
                (f"{head}.conv2d_list.{i}.bias", (num_classes,)),
            ]
    return out


def entries(module: nn.Module) -> list[tuple[str, tuple]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def randomize_(module: nn.Module, seed: int = 0) -> None:
    """Informative random weights: He-scaled convs, random BN affine and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ---- functional references (straightforward re-statements of the architecture) ----------------------------------


def ref_bn(x, sd, p):
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], training=False
    )


def ref_classifier(x, sd, p, branches=2):
    out = 0
    for i, d in enumerate(DILATIONS[:branches]):
        w, b = sd[f"{p}.conv2d_list.{i}.weight"], sd[f"{p}.conv2d_list.{i}.bias"]
        out = out + F.conv2d(x, w, b, padding=d, dilation=d)
    return out


def ref_resnet(sd, x, layers, heads):
    x = F.relu(ref_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    feats = {}
    for li, (stride, dil) in enumerate([(1, 1), (2, 1), (1, 2), (1, 4)], start=1):
        for b in range(layers[li - 1]):
            p = f"layer{li}.{b}"
            s = stride if b == 0 else 1
            out = F.relu(ref_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=s), sd, f"{p}.bn1"))
            out = F.relu(ref_bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=dil, dilation=dil), sd, f"{p}.bn2"))
            out = ref_bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if b == 0:
                res = ref_bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1")
            else:
                res = x
            x = F.relu(out + res)
        feats[li] = x
    return tuple(ref_classifier(feats[src], sd, head) for head, src in heads)


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet101_multi() -> DeeplabMulti:
    return DeeplabMulti(num_classes=19)


# ---- layouts ----------------------------------------------------------------------------------------------------


def test_real_resnet101_deeplab_multi_keys_and_shapes(resnet101_multi):
    expected = expected_resnet_entries((3, 4, 23, 3), [("layer5", 1024), ("layer6", 2048)], 19)
    assert entries(resnet101_multi) == expected
    # sanity of the enumeration itself: stem 1+5, 18 per block (3 convs + 3 BNs x 5), 6 per downsample, 2 x 8 heads
    assert len(expected) == (1 + 5) + 18 * (3 + 4 + 23 + 3) + 6 * 4 + 2 * 8 == 640


def test_real_resnet101_strides_and_dilations(resnet101_multi):
    m = resnet101_multi
    assert m.maxpool.ceil_mode and m.maxpool.kernel_size == 3 and m.maxpool.stride == 2 and m.maxpool.padding == 1
    assert m.conv1.stride == (2, 2) and m.conv1.padding == (3, 3) and m.conv1.bias is None
    assert m.layer2[0].conv1.stride == (2, 2) and m.layer2[0].conv2.stride == (1, 1)
    assert m.layer2[0].downsample[0].stride == (2, 2)
    for li, dil in ((1, 1), (2, 1), (3, 2), (4, 4)):
        for block in getattr(m, f"layer{li}"):
            assert block.conv2.dilation == (dil, dil) and block.conv2.padding == (dil, dil)
            assert block.conv2.stride == (1, 1)
    for li in (3, 4):
        assert getattr(m, f"layer{li}")[0].downsample[0].stride == (1, 1)
    for head in (m.layer5, m.layer6):
        assert [c.dilation for c in head.conv2d_list] == [(d, d) for d in DILATIONS]
        assert [c.padding for c in head.conv2d_list] == [(d, d) for d in DILATIONS]


def test_res_deeplab_keys_and_default_classes():
    m = Res_Deeplab(layers=(1, 2, 1, 1))
    assert entries(m) == expected_resnet_entries((1, 2, 1, 1), [("layer5", 2048)], 21)
    assert entries(Res_Deeplab(num_classes=19, layers=TINY))[-1] == ("layer5.conv2d_list.3.bias", (19,))


def test_deeplab_vgg_keys_and_shapes():
    m = DeeplabVGG(num_classes=19)
    convs = [  # (our index, in, out) of VGG-16's 13 convs after pool4 is dropped, then fc6, fc7
        (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
        (17, 256, 512), (19, 512, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512), (27, 512, 512),
        (29, 512, 1024), (31, 1024, 1024),
    ]
    expected = []
    for i, cin, cout in convs:
        expected += [(f"features.{i}.weight", (cout, cin, 3, 3)), (f"features.{i}.bias", (cout,))]
    for i in range(4):
        expected += [
            (f"classifier.conv2d_list.{i}.weight", (19, 1024, 3, 3)),
            (f"classifier.conv2d_list.{i}.bias", (19,)),
        ]
    assert entries(m) == expected
    f = m.features
    assert len(f) == 33
    assert [i for i, layer in enumerate(f) if isinstance(layer, nn.MaxPool2d)] == [4, 9, 16]
    for i in (23, 25, 27):
        assert f[i].dilation == (2, 2) and f[i].padding == (2, 2)
    for i in (29, 31):
        assert f[i].dilation == (4, 4) and f[i].padding == (4, 4)
    for i in (0, 2, 5, 21):
        assert f[i].dilation == (1, 1) and f[i].padding == (1, 1)
    assert isinstance(f[30], nn.ReLU) and isinstance(f[32], nn.ReLU)


def test_discriminator_layout_and_forward():
    d = FCDiscriminator(num_classes=19)
    assert entries(d) == [
        ("conv1.weight", (64, 19, 4, 4)), ("conv1.bias", (64,)),
        ("conv2.weight", (128, 64, 4, 4)), ("conv2.bias", (128,)),
        ("conv3.weight", (256, 128, 4, 4)), ("conv3.bias", (256,)),
        ("conv4.weight", (512, 256, 4, 4)), ("conv4.bias", (512,)),
        ("classifier.weight", (1, 512, 4, 4)), ("classifier.bias", (1,)),
    ]
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in d.modules())
    x = torch.randn(2, 19, 65, 129)
    out = d(x.clone())
    assert out.shape == (2, 1, disc_out_size(65), disc_out_size(129)) == (2, 1, 2, 4)
    sd = d.state_dict()
    ref = x
    for name in ("conv1", "conv2", "conv3", "conv4"):
        ref = F.leaky_relu(F.conv2d(ref, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=2, padding=1), 0.2)
    ref = F.conv2d(ref, sd["classifier.weight"], sd["classifier.bias"], stride=2, padding=1)
    torch.testing.assert_close(out, ref)
    assert FCDiscriminator(num_classes=5, ndf=8)(torch.randn(1, 5, 32, 40)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"H, W >= 32"):
        d(torch.randn(1, 19, 31, 64))
    with pytest.raises(ValueError, match=r"\[N, 19, H, W\]"):
        d(torch.randn(1, 3, 64, 64))


# ---- output sizes -----------------------------------------------------------------------------------------------


def test_output_size_formula_hand_values():
    # By hand: 512 -> conv1 256 -> pool ceil(255/2)+1 = 129 -> layer2 floor(128/2)+1 = 65; 1024 -> 512 -> 257 -> 129.
    assert (deeplab_out_size(512), deeplab_out_size(1024)) == (65, 129)
    assert (deeplab_out_size(65), deeplab_out_size(97), deeplab_out_size(64)) == (9, 13, 9)


@pytest.mark.parametrize("hw", [(65, 97), (64, 64), (33, 45), (512, 1024)])
def test_deeplab_multi_output_sizes(hw):
    m = DeeplabMulti(num_classes=7, layers=TINY).eval()
    with torch.no_grad():
        aux, main = m(torch.randn(1, 3, *hw))
    expected = (1, 7, deeplab_out_size(hw[0]), deeplab_out_size(hw[1]))
    assert aux.shape == expected and main.shape == expected


def test_res_deeplab_and_vgg_output_sizes():
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        out = Res_Deeplab(num_classes=5, layers=TINY).eval()(x)
        vgg = DeeplabVGG(num_classes=5).eval()(x)
    assert out.shape == (2, 5, deeplab_out_size(65), deeplab_out_size(97))
    assert vgg.shape == (2, 5, vgg_out_size(65), vgg_out_size(97)) == (2, 5, 8, 12)


# ---- forward semantics against the functional reference -------------------------------------------------------


def test_deeplab_multi_forward_matches_functional_reference():
    layers = (1, 2, 1, 2)
    m = DeeplabMulti(num_classes=5, layers=layers)
    randomize_(m)
    m.eval()
    x = torch.randn(1, 3, 41, 57)
    with torch.no_grad():
        aux, main = m(x)
        ref_aux, ref_main = ref_resnet(m.state_dict(), x, layers, [("layer5", 3), ("layer6", 4)])
    assert ref_main.abs().mean() > 0.1  # informative outputs
    torch.testing.assert_close(aux, ref_aux, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(main, ref_main, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model_outputs(m, x), main)


def test_res_deeplab_forward_matches_functional_reference():
    m = Res_Deeplab(num_classes=4, layers=TINY)
    randomize_(m, seed=1)
    m.eval()
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        (ref,) = ref_resnet(m.state_dict(), x, TINY, [("layer5", 4)])
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model_outputs(m, x), ref, rtol=1e-4, atol=1e-4)


def test_deeplab_vgg_forward_matches_functional_reference():
    m = DeeplabVGG(num_classes=3)
    randomize_(m, seed=2)
    m.eval()
    sd = m.state_dict()
    x = torch.randn(1, 3, 48, 56)
    ref = x
    plan = [0, 2, "M", 5, 7, "M", 10, 12, 14, "M", 17, 19, 21, 23, 25, 27, 29, 31]
    for item in plan:
        if item == "M":
            ref = F.max_pool2d(ref, 2, 2)
            continue
        d = 2 if item in (23, 25, 27) else 4 if item in (29, 31) else 1
        ref = F.relu(F.conv2d(ref, sd[f"features.{item}.weight"], sd[f"features.{item}.bias"], padding=d, dilation=d))
    ref = ref_classifier(ref, sd, "classifier")
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


# ---- the classifier's two-branch quirk --------------------------------------------------------------------------


def test_classifier_sums_only_first_two_branches_by_default():
    torch.manual_seed(0)
    head = Classifier_Module(8, DILATIONS, DILATIONS, num_classes=3)
    x = torch.randn(2, 8, 30, 31)
    w = [(c.weight.detach().clone(), c.bias.detach().clone()) for c in head.conv2d_list]
    by_hand = F.conv2d(x, *w[0], padding=6, dilation=6) + F.conv2d(x, *w[1], padding=12, dilation=12)
    out = head(x)
    torch.testing.assert_close(out, by_hand)
    with torch.no_grad():  # the dilation-18 and -24 branches never act
        head.conv2d_list[2].weight.normal_()
        head.conv2d_list[3].bias.fill_(5.0)
    torch.testing.assert_close(head(x), out)


def test_classifier_all_branches_opt_in():
    torch.manual_seed(1)
    head = Classifier_Module(8, DILATIONS, DILATIONS, num_classes=3, all_branches=True)
    x = torch.randn(1, 8, 30, 31)
    by_hand = sum(
        F.conv2d(x, c.weight, c.bias, padding=d, dilation=d) for c, d in zip(head.conv2d_list, DILATIONS)
    )
    torch.testing.assert_close(head(x), by_hand)
    head.all_branches = False
    assert not torch.allclose(head(x), by_hand)
    m = DeeplabMulti(num_classes=3, all_branches=True, layers=TINY)
    assert m.layer5.all_branches and m.layer6.all_branches
    assert not DeeplabMulti(num_classes=3, layers=TINY).layer6.all_branches
    assert DeeplabVGG(num_classes=3, all_branches=True).classifier.all_branches
    assert Res_Deeplab(num_classes=3, all_branches=True, layers=TINY).layer5.all_branches


def test_classifier_weight_init_and_bad_series():
    torch.manual_seed(0)
    m = DeeplabMulti(num_classes=19, layers=TINY)
    w = torch.cat([m.layer6.conv2d_list[i].weight.flatten() for i in range(4)])
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001
    conv = torch.cat([m.layer4[0].conv2.weight.flatten(), m.conv1.weight.flatten()])
    assert abs(conv.std().item() - 0.01) < 0.001  # every conv ~ N(0, 0.01) (not torchvision's init)
    assert torch.all(m.bn1.weight == 1) and torch.all(m.layer3[0].bn3.bias == 0)
    with pytest.raises(ValueError, match="at least two branches"):
        Classifier_Module(8, [6], [6], 3)


# ---- BatchNorm behaviour ----------------------------------------------------------------------------------------


def bns(m: nn.Module) -> list[nn.BatchNorm2d]:
    return [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]


def test_bn_affine_frozen_but_running_stats_update_in_train_mode():
    m = DeeplabMulti(num_classes=3, layers=TINY)
    assert len(bns(m)) == 1 + 4 * 4  # stem + (3 per block + downsample) x 4 layers
    for bn in bns(m):
        assert bn.affine and not bn.weight.requires_grad and not bn.bias.requires_grad
    bn_param_ids = {id(p) for bn in bns(m) for p in bn.parameters()}
    assert all(p.requires_grad for p in m.parameters() if id(p) not in bn_param_ids)
    m.train()
    assert all(bn.training for bn in bns(m))
    before = m.bn1.running_mean.clone()
    aux, main = m(torch.randn(2, 3, 40, 40) * 50)
    assert not torch.equal(m.bn1.running_mean, before)
    assert int(m.bn1.num_batches_tracked) == 1
    (aux.sum() + main.sum()).backward()
    assert m.bn1.weight.grad is None and m.layer2[0].downsample[1].bias.grad is None
    assert m.layer2[0].conv2.weight.grad is not None


def test_freeze_bn_stats_opt_in():
    m = DeeplabMulti(num_classes=3, freeze_bn_stats=True, layers=TINY)
    m.train()
    assert m.training and not any(bn.training for bn in bns(m))
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    m(torch.randn(2, 3, 40, 40) * 50)
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    m.eval()
    m.train(True)
    assert not any(bn.training for bn in bns(m))
    r = Res_Deeplab(num_classes=3, freeze_bn_stats=True, layers=TINY).train()
    assert not any(bn.training for bn in bns(r))


# ---- optimizer listing ------------------------------------------------------------------------------------------


def expected_multiplicity(layers, heads) -> dict[str, int]:
    """The original listing by hand: stem conv 1, block convs 3, downsample convs 4, classifier params 1."""
    exp = {"conv1.weight": 1}
    for li, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            for c in ("conv1", "conv2", "conv3"):
                exp[f"layer{li}.{b}.{c}.weight"] = 3
            if b == 0:
                exp[f"layer{li}.0.downsample.0.weight"] = 4
    for head in heads:
        for i in range(4):
            exp[f"{head}.conv2d_list.{i}.weight"] = 1
            exp[f"{head}.conv2d_list.{i}.bias"] = 1
    return exp


def test_parameter_multiplicity_deeplab_multi():
    m = DeeplabMulti(num_classes=3, layers=(2, 1, 1, 2))
    counts = parameter_multiplicity(m)
    assert counts == expected_multiplicity((2, 1, 1, 2), ["layer5", "layer6"])
    assert not any(".bn" in n or n.startswith("bn1") or "downsample.1" in n for n in counts)
    assert model_pkg.parameter_multiplicity is parameter_multiplicity


def test_parameter_multiplicity_res_deeplab_and_vgg():
    assert parameter_multiplicity(Res_Deeplab(num_classes=3, layers=TINY)) == expected_multiplicity(TINY, ["layer5"])
    vgg = DeeplabVGG(num_classes=3)
    assert parameter_multiplicity(vgg) == {n: 1 for n, _ in vgg.named_parameters()}


def test_optim_parameters_groups():
    m = DeeplabMulti(num_classes=3, layers=TINY)
    names = {id(p): n for n, p in m.named_parameters()}
    groups = m.optim_parameters(SimpleNamespace(learning_rate=2.5e-4))
    assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3]
    assert len(groups[0]["params"]) == sum(expected_multiplicity(TINY, []).values())
    heads = {n for n in expected_multiplicity(TINY, ["layer5", "layer6"]) if n.startswith(("layer5.", "layer6."))}
    assert [names[id(p)] for p in groups[1]["params"]] == [n for n, _ in m.named_parameters() if n in heads]
    assert len(heads) == 16
    assert [g["lr"] for g in m.optim_parameters(0.01)] == [0.01, pytest.approx(0.1)]
    dedup = m.optim_parameters_dedup(0.01)
    flat = [id(p) for g in dedup for p in g["params"]]
    assert len(flat) == len(set(flat)) == len([p for p in m.parameters() if p.requires_grad])
    first_order = list(dict.fromkeys(id(p) for p in groups[0]["params"]))
    assert [id(p) for p in dedup[0]["params"]] == first_order
    assert [g["lr"] for g in dedup] == [0.01, pytest.approx(0.1)]
    r = Res_Deeplab(num_classes=3, layers=TINY)
    assert [id(p) for p in r.optim_parameters(1.0)[1]["params"]] == [id(p) for p in r.layer5.parameters()]
    with pytest.raises(TypeError, match="learning rate"):
        m.optim_parameters("fast")


def test_vgg_optim_parameters_faithful_single_group():
    """The original's VGG optim_parameters returned every parameter in one group: no 10x classifier rate."""
    vgg = DeeplabVGG(num_classes=3)
    (group,) = vgg.optim_parameters(SimpleNamespace(learning_rate=1e-3))
    assert group["lr"] == 1e-3 and [id(p) for p in group["params"]] == [id(p) for p in vgg.parameters()]
    assert len(group["params"]) == 30 + 8  # 13 convs + fc6 + fc7 (weight, bias each), 4 classifier branches
    assert vgg.optim_parameters_dedup(1e-3)[0]["params"] == group["params"]


# ---- build_model / model_outputs --------------------------------------------------------------------------------


def test_build_model_names():
    assert type(build_model("DeepLab", 19, layers=TINY)) is DeeplabMulti
    assert type(build_model("DeeplabMulti", 19, layers=TINY)) is DeeplabMulti
    oracle = build_model("Oracle", 19, layers=TINY, all_branches=True, freeze_bn_stats=True)
    assert type(oracle) is Res_Deeplab and oracle.layer5.all_branches and oracle.freeze_bn_stats
    vgg = build_model("DeeplabVGG", 19, layers=TINY, freeze_bn_stats=True)
    assert type(vgg) is DeeplabVGG and vgg.classifier.conv2d_list[0].out_channels == 19
    with pytest.raises(ValueError) as e:
        build_model("deeplab", 19)
    for name in ("DeepLab", "DeeplabMulti", "DeeplabVGG", "Oracle"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="--resnet-layers"):
        build_model("DeepLab", 19, layers=(1, 1, 1))
    with pytest.raises(ValueError, match="--resnet-layers"):
        DeeplabMulti(layers=(1, 0, 1, 1))


def test_model_outputs_picks_main_output():
    class Two(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    x = torch.ones(1, 1, 2, 2)
    assert torch.equal(model_outputs(Two(), x), x * 3)
    assert torch.equal(model_outputs(nn.Identity(), x), x)
