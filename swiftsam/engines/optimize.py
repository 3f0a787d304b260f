"""Inference-only rewrites of a model that keep its results (up to float rounding)."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _plain_conv(module: nn.Module | None) -> bool:
    # a quantized conv (swiftsam.quant) keeps its batch norm: its int8 scales belong to the unfolded weights
    return isinstance(module, nn.Conv2d) and not hasattr(module, "w_scale")


def _is_sequential_pair(module: nn.Module) -> bool:
    return (isinstance(module, nn.Sequential) and len(module) == 2 and _plain_conv(module[0])
            and isinstance(module[1], nn.BatchNorm2d))


def _attribute_pairs(module: nn.Module) -> list[tuple[str, str]]:
    found = []
    for conv_name, bn_name in getattr(module, "bn_pairs", ()):
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if _plain_conv(conv) and isinstance(bn, nn.BatchNorm2d):
            found.append((conv_name, bn_name))
    return found


def count_foldable(module: nn.Module) -> int:
    """How many (conv, batch norm) pairs of ``module`` can be folded.

    A pair is a ``Sequential(Conv2d, BatchNorm2d)`` or two attributes that a module names in its
    ``bn_pairs`` class attribute (the conv's output must feed only that batch norm).
    """
    return sum(_is_sequential_pair(m) + len(_attribute_pairs(m)) for m in module.modules())


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with each batch norm folded into the conv before it.

    Eval-mode batch norm is an affine map per channel, so it folds into the conv's weight and bias:
    one pass over the activation instead of two. TinyViT, EfficientViT and ResNet encoders are full of
    such pairs. The original module is left untouched; a module with nothing to fold is returned as is.
    """
    if count_foldable(module) == 0:
        return module
    if any(m.training for m in module.modules()):
        raise ValueError("fold_batch_norms needs a module in eval mode (call .eval() first).")
    folded = copy.deepcopy(module)
    if _is_sequential_pair(folded):
        return fuse_conv_bn_eval(folded[0], folded[1])
    _fold_in_place(folded)
    return folded


def _fold_in_place(module: nn.Module) -> None:
    for conv_name, bn_name in _attribute_pairs(module):
        setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), getattr(module, bn_name)))
        setattr(module, bn_name, nn.Identity())
    for name, child in module.named_children():
        if _is_sequential_pair(child):
            setattr(module, name, fuse_conv_bn_eval(child[0], child[1]))
        else:
            _fold_in_place(child)
