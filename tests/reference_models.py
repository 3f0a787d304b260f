"""Builders for the authors' reference models, matching the swiftsam zoo entries (tests only)."""

from __future__ import annotations

from functools import partial

import torch

import tests.conftest  # noqa: F401  (installs the torchvision/timm stubs first)

VIT = {
    "b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def reference_sam_vit(size: str, depth: int | None = None):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = dict(VIT[size])
    if depth is not None:
        cfg["global_attn_indexes"] = tuple(i for i in cfg["global_attn_indexes"] if i < depth) or (depth - 1,)
        cfg["depth"] = depth
    encoder = ImageEncoderViT(
        img_size=1024, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=16,
        qkv_bias=True, use_rel_pos=True, window_size=14, out_chans=256, **cfg,
    )
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
    )


def reference_mobilesam():
    from mobile_sam.build_sam import build_sam_vit_t

    return build_sam_vit_t()


def reference_efficientvit(variant: str, depth_scale: float = 1.0):
    from efficientsam.models.efficientvit import backbone as bb
    from efficientsam.models.efficientvit import sam as evs
    from efficientsam.models.nn.norm import set_norm_eps

    if depth_scale == 1.0:
        model = getattr(evs, f"efficientvit_sam_{variant}")()
    else:  # reduced-depth XL, built the way the authors' xl builders do
        full = {"xl0": ((0, 1, 1, 2, 3, 3), 6), "xl1": ((1, 2, 2, 4, 6, 6), 12)}[variant]
        depths = [max(1, round(d * depth_scale)) if d else 0 for d in full[0]]
        backbone = bb.EfficientViTLargeBackbone(
            width_list=[32, 64, 128, 256, 512, 1024], depth_list=depths,
            block_list=["res", "fmb", "fmb", "fmb", "att@3", "att@3"], expand_list=[1, 4, 4, 4, 4, 6],
            fewer_norm_list=[False, False, False, False, True, True],
        )
        neck = evs.SamNeck(fid_list=["stage5", "stage4", "stage3"], in_channel_list=[1024, 512, 256], head_width=256,
                           head_depth=max(1, round(full[1] * depth_scale)), expand_ratio=4, middle_op="fmb")
        model = evs.build_efficientvit_sam(evs.EfficientViTSamImageEncoder(backbone, neck), 1024)
    set_norm_eps(model, 1e-6)
    return model
