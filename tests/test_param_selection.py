"""Parameter selections of the stationarity term beyond the head: the normalization layers' affine
parameters, the last block, and lists mixing keywords and globs (on EfficientNet-Lite0 as packaged
and on dsv's ConvNet)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsv import kkt
from dsv.builtin.models import ConvNet


@pytest.fixture(scope="module")
def lite0():
    from dsv.plugins import ModelRequest, get_plugin_manager

    return get_plugin_manager().registry("models").get("efficientnet-lite0")(ModelRequest()).module


def test_norm_affine_is_every_batchnorm_scale_and_shift(lite0):
    chosen = kkt.select_parameters(lite0, "norm_affine")
    bns = [m for m in lite0.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(chosen) == 2 * len(bns) and len(bns) > 40
    assert {id(p) for _, p in chosen} == {id(p) for m in bns for p in (m.weight, m.bias)}
    with pytest.raises(ValueError, match="no normalization layer"):
        kkt.select_parameters(nn.Sequential(nn.Linear(2, 2)), "norm_affine")


def test_last_block_is_the_last_mbconv_block_and_what_follows_it_but_the_head(lite0):
    names = [n for n, _ in kkt.select_parameters(lite0, "last_block")]
    assert names[0].startswith("_blocks.15.") and all(not n.startswith("_blocks.14.") for n in names)
    assert names[-3:] == ["_conv_head.weight", "_bn1.weight", "_bn1.bias"]
    assert not any(n.startswith("_fc.") for n in names)


def test_a_list_mixes_keywords_and_globs_in_the_model_order(lite0):
    names = [n for n, _ in kkt.select_parameters(lite0, ["head", "_conv_stem.*", "norm_affine"])]
    assert names[0] == "_conv_stem.weight" and names[-2:] == ["_fc.weight", "_fc.bias"]
    assert len(names) == len(set(names)) == 1 + 2 + len(kkt.select_parameters(lite0, "norm_affine"))
    assert [n for n, _ in kkt.select_parameters(lite0, ["head"])] == ["_fc.weight", "_fc.bias"]


def test_last_block_of_a_plain_convnet_and_a_model_without_blocks():
    torch.manual_seed(0)
    net = ConvNet(1, 8, 10, width=8, depth=2, norm="batch")
    names = [n for n, _ in kkt.select_parameters(net, "last_block")]
    assert names == ["features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias"]
    with pytest.raises(ValueError, match="no ModuleList or Sequential"):
        kkt.select_parameters(nn.Linear(3, 2), "last_block")


def test_the_stationarity_loss_takes_the_new_selections(lite0):
    from dsv.builtin.losses import Stationarity

    term = Stationarity(params=["head", "norm_affine"], rows="all", mode="exact")
    term.attach(lite0)
    try:
        assert len(term.tensors) == 2 + len(kkt.select_parameters(lite0, "norm_affine"))
    finally:
        term.detach()
        for p in lite0.parameters():
            p.requires_grad_(False)
