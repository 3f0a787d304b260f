"""The zoo's entries: every efficient SAM family, loadable from its authors' checkpoint."""

from __future__ import annotations

from collections.abc import Callable

from ..modeling.common import set_norm_eps
from ..modeling.encoders import (
    ImageEncoderViT,
    ResNetSamEncoder,
    TinyViT,
    build_efficientvit_sam_encoder,
)
from ..modeling.sam import ImageSpec, Sam, build_sam
from ..modeling.nanosam2 import build_nanosam2
from ..modeling.sam2 import build_own_video_sam, build_sam2, sam2_image_spec
from .registry import Bundled, ModelEntry, Weights, register

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
EVIT_URL = "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/"

_VIT_CONFIGS = {
    "b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def _sam_vit(size: str, depth: int | None = None) -> Sam:
    cfg = dict(_VIT_CONFIGS[size])
    if depth is not None:  # reduced depth, for tests; global blocks are kept inside the range
        cfg["global_attn_indexes"] = tuple(i for i in cfg["global_attn_indexes"] if i < depth) or (depth - 1,)
        cfg["depth"] = depth
    return build_sam(ImageEncoderViT(**cfg), ImageSpec())


def _tiny_vit() -> Sam:
    return build_sam(TinyViT(), ImageSpec())


def _efficientvit(variant: str, depth_scale: float = 1.0) -> Sam:
    encoder = build_efficientvit_sam_encoder(variant, depth_scale)
    model = build_sam(encoder, ImageSpec(input_size=encoder.img_size))
    set_norm_eps(model, 1e-6)  # the authors set every norm of the model, decoder included, to 1e-6
    return model


def _nanosam(depth: str, input_size: int = 1024) -> Sam:
    return build_sam(ResNetSamEncoder(depth, img_size=input_size), ImageSpec(input_size=input_size))


for size, (file, sha, mb) in {
    "b": ("sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 358),
    "l": ("sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1192),
    "h": ("sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2446),
}.items():
    register(ModelEntry(
        name=f"sam-vit-{size}",
        family="sam",
        builder=lambda depth=None, _s=size: _sam_vit(_s, depth),
        spec=ImageSpec(),
        description=f"Segment Anything ViT-{size.upper()} (Meta)",
        weights=Weights(file, (SAM_URL + file,), sha, mb),
        aliases=(f"vit_{size}", f"sam_vit_{size}"),
    ))

_TINYVIT_HEAD = ("image_encoder.norm_head.", "image_encoder.head.")

register(ModelEntry(
    name="mobilesam",
    family="tinyvit",
    builder=_tiny_vit,
    spec=ImageSpec(),
    description="MobileSAM: TinyViT-5M distilled from SAM ViT-H",
    weights=Weights(
        "mobile_sam.pt",
        (
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "https://huggingface.co/kornia/mobile_sam/resolve/main/mobile_sam.pt",
        ),
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        39,
    ),
    ignore_keys=_TINYVIT_HEAD,
    aliases=("mobile_sam", "vit_t"),
))

TINYSAM_URL = "https://github.com/xinghaochen/TinySAM/releases/download/"
register(ModelEntry(
    name="tinysam",
    family="tinyvit",
    builder=_tiny_vit,
    spec=ImageSpec(),
    description="TinySAM: TinyViT-5M, full-stage distillation with hard prompt sampling (release 3.0, COCO AP 42.3)",
    # TinySAM's later checkpoint (its README's link since release 3.0); the authors publish no sha256 and no
    # mirror holds this file: the download cache pins its hash and size on first download (zoo/hub.py)
    weights=Weights("tinysam_42.3.pth", (TINYSAM_URL + "3.0/tinysam_42.3.pth",), None, 41),
    ignore_keys=_TINYVIT_HEAD,
    multimask_only=True,
    aliases=("tinysam-42.3", "tinysam-3.0"),
))
register(ModelEntry(
    name="tinysam-1.0",
    family="tinyvit",
    builder=_tiny_vit,
    spec=ImageSpec(),
    description="TinySAM's first checkpoint (release 1.0, COCO AP 41.9)",
    weights=Weights(
        "tinysam.pth",
        (TINYSAM_URL + "1.0/tinysam.pth", "https://huggingface.co/xinghaochen/tinysam/resolve/main/tinysam.pth"),
        "4b8edcf93af46e2a658ae455574de62873778a5cc3fd8e8adf094dcdfa957cf2",  # also the Hugging Face file's LFS sha256
        40,
    ),
    ignore_keys=_TINYVIT_HEAD,
    multimask_only=True,
    aliases=("tinysam1",),
))

def _load_qtinysam(path: str, build: Callable[[], Sam]) -> Sam:
    from .qtinysam import load_qtinysam  # a checkpoint format of its own: read on demand

    return load_qtinysam(path, build)


register(ModelEntry(
    name="tinysam-w8a8",
    family="tinyvit",
    builder=_tiny_vit,
    spec=ImageSpec(),
    description="Q-TinySAM: TinySAM with W8A8 post-training quantization (read without TinySAM's code)",
    weights=Weights(
        "tinysam_w8a8.pth",
        (TINYSAM_URL + "2.0/tinysam_w8a8.pth",
         "https://huggingface.co/xinghaochen/Q-TinySAM/resolve/main/tinysam_w8a8.pth"),
        "bf611cf86b9af930cfc865747f6a11ddddb867fd0103ba98a54e5d248b657eeb",
    ),
    multimask_only=True,
    loader=_load_qtinysam,
    aliases=("q-tinysam", "qtinysam"),
))

_EVIT_SHA = {
    "l0": "c4f994b01a16d48bcf2fbbb089448cfbf58fae5811edfa8113c953b8b8cc64b8",
    "l1": "fa151df2b9b96896accd505470755cdd293a4c50cdabac95478f3fbd86d9152b",
    "l2": "d4bfd842224cbb99de09acc3325e81ac5b7e8725c8fbdab152305e5d934bfe4a",
    "xl0": "9bc2f87bd23d6e6d1f7b5beff910f98835c7c333fac73e695bac0bec685968f8",
    "xl1": "10f42277679427c1183dcff19758e536aa86bcc4304e4b387ff48865784be05c",
}
for variant, sha in _EVIT_SHA.items():
    file = f"efficientvit_sam_{variant}.pt"
    register(ModelEntry(
        name=f"efficientvit-sam-{variant}",
        family="efficientvit",
        builder=lambda depth_scale=1.0, _v=variant: _efficientvit(_v, depth_scale),
        spec=ImageSpec(input_size=512 if variant.startswith("l") else 1024),
        description=f"EfficientViT-SAM-{variant.upper()} (MIT Han Lab)",
        weights=Weights(file, (EVIT_URL + file,), sha),
        aliases=(f"efficientvit_sam_{variant}",),
    ))

for depth in ("18", "34", "50"):
    register(ModelEntry(
        name=f"nanosam-r{depth}",
        family="nanosam",
        builder=lambda input_size=1024, _d=depth: _nanosam(f"resnet{_d}", input_size),
        spec=ImageSpec(),
        description=f"NanoSAM-style ResNet{depth} student + SAM decoder (train with swiftsam; no official .pt)",
        aliases=(f"resnet{depth}",),
    ))

# The project's own models (docs/models.md): a ResNet34 SAM trained from scratch on the shared open data
# (train-masks, box prompts with a box-shaped mask prior), and a ResNet18 encoder distilled from it
# NanoSAM-style, which keeps the teacher's prompt encoder and mask decoder. Only the student's fp16 weights ship
# in the package (the tree stays small enough for a GPU test machine); the teacher is retrained from its config
# or restored from the git history (scripts/restore_teacher.py, README "The project's own models").
_OWN_SHA = {
    "swiftsam-decoder.fp16.pt": "4fb600b4c4ea77dd8f77a03d4ba604cc61350b5b4059ca4276dae296b3176aa5",
    "swiftsam-r18-encoder.fp16.pt": "b66c09bde3e960de0f0bea0e74cff8da3145e5b2b4e94b94b0c3dd54107bbb51",
}
# The student runs at 256 px by default: its box-protocol mIoU on coco-mini val is the same from 256 to 640 px
# (0.5857-0.5861) and 256 px halves its encoder time (docs/models.md, "Input size").
_STUDENT_FILES = ("swiftsam-r18-encoder.fp16.pt", "swiftsam-decoder.fp16.pt")
# Segment-everything defaults for the student's weights (SAM's keep nothing: its predicted IoUs stay below ~0.45,
# its logits below ~5). Calibrated on coco-mini val (benchmarks/everything.md, "Default settings per model"): a
# 16 x 16 grid (one point per cell of its encoder's 16 x 16 feature map at 256 px; 32 x 32 costs 4x the decoding),
# predicted IoU > 0.15, stability >= 0.7 at logit offsets +-0.5 (its logits rarely pass 5, so SAM's +-1.0 spans most
# of them), and for the hierarchical strategy a coverage logit of 2.0 (about a quarter of a mask's pixels pass it).
_STUDENT_EVERYTHING = {"points_per_side": 16, "pred_iou_thresh": 0.15, "stability_score_thresh": 0.7,
                       "stability_score_offset": 0.5, "high_score_thresh": 2.0}
register(ModelEntry(
    name="swiftsam-r18",
    family="swiftsam",
    builder=lambda input_size=256: _nanosam("resnet18", input_size),
    spec=ImageSpec(input_size=256),
    description="swiftsam's own ResNet18 SAM at 256 px (student, the default model; trained on open data, bundled)",
    bundled=Bundled(_STUDENT_FILES, tuple(_OWN_SHA[f] for f in _STUDENT_FILES)),
    box_mask_prior=True,
    aliases=("swiftsam", "swiftsam-student"),
    everything=_STUDENT_EVERYTHING,
))
register(ModelEntry(
    name="swiftsam-r34",
    family="swiftsam",
    builder=lambda input_size=512: _nanosam("resnet34", input_size),
    spec=ImageSpec(input_size=512),
    description="swiftsam's own ResNet34 SAM at 512 px (the student's teacher; not bundled: checkpoint=)",
    box_mask_prior=True,
    aliases=("swiftsam-teacher",),
    weights_note="its weights do not ship with the package: restore them with `python scripts/restore_teacher.py "
                 "--out swiftsam-r34.pt` (from the git history) or retrain them with `swiftsam train "
                 "benchmarks/configs/swiftsam-teacher.yaml`, then pass checkpoint=swiftsam-r34.pt",
))
# The project's own video model (docs/models.md, "Video model"): swiftsam-r18's files as they are (its decoder file
# under SAM 2's module names) plus the memory modules trained by `swiftsam train
# benchmarks/configs/swiftsam-r18-video.yaml` (train-video; swiftsam.train.video.write_memory_weights).
_VIDEO_FILE = "swiftsam-r18-video-memory.fp16.pt"
_VIDEO_SHA = "3e6042ea387b11f9c7d5daf565721fdf4acdcedb89cf22213ae3d16d60219920"
register(ModelEntry(
    name="swiftsam-r18-video",
    family="swiftsam",
    builder=lambda input_size=256: build_own_video_sam(input_size),
    spec=ImageSpec(input_size=256),
    description="swiftsam's own video model: swiftsam-r18 + SAM 2-style memory trained on open clips (bundled; "
                "the default of swiftsam track)",
    bundled=Bundled(_STUDENT_FILES + (_VIDEO_FILE,), tuple(_OWN_SHA[f] for f in _STUDENT_FILES) + (_VIDEO_SHA,),
                    rename=(("prompt_encoder.", "sam_prompt_encoder."), ("mask_decoder.", "sam_mask_decoder."))),
    box_mask_prior=True,
    aliases=("swiftsam-video",),
))


# ----------------------------------------------------------------------------- SAM 2.1
SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


def _sam2(variant: str, depth: tuple[int, ...] | None = None, input_size: int = 1024) -> Sam:
    return build_sam2(variant, depth=depth, input_size=input_size)


# Meta publishes no sha256 for these files and none could be downloaded here to hash: the download cache pins
# each file's sha256 and size on its first download and refuses a later one that differs (zoo/hub.py)
for variant, short, hf, mb, params in (
    ("tiny", "t", "tiny", 149, "38.9M"),
    ("small", "s", "small", 176, "46M"),
    ("base_plus", "b+", "base-plus", 309, "80.8M"),
    ("large", "l", "large", 857, "224.4M"),
):
    file = f"sam2.1_hiera_{variant}.pt"
    register(ModelEntry(
        name=f"sam2.1-hiera-{hf}",
        family="sam2",
        builder=lambda depth=None, input_size=1024, _v=variant: _sam2(_v, depth, input_size),
        spec=sam2_image_spec(),
        description=f"SAM 2.1 Hiera-{short.upper()} ({params} parameters; Meta): image path, memory weights loaded",
        weights=Weights(file, (SAM2_URL + file, f"https://huggingface.co/facebook/sam2.1-hiera-{hf}/resolve/main/{file}"),
                        None, mb),
        aliases=(f"sam2.1_hiera_{variant}", f"sam2.1-hiera-{short}", f"sam2.1_hiera_{short}"),
    ))


# nanosam2's students (modeling/nanosam2.py): SAM 2.1 with a ResNet18 or MobileNetV3-Large trunk and an FPN neck in
# place of Hiera; the heads and memory modules are the teacher's. nanosam2 never published weights: distil them.
_NANOSAM2_NOTE = ("no official nanosam2 student weights exist anywhere: distil them from a SAM 2.1 teacher with "
                  "`swiftsam train` (recipe distill-encoder, teacher e.g. sam2.1-hiera-tiny) and pass "
                  "checkpoint=PATH to the model.pt it writes (docs/models.md, \"nanosam2 students\")")
for backbone, hf, label, aliases in (
    ("resnet18", "resnet18", "ResNet18", ("nanosam2-r18", "nanosam2_resnet18")),
    ("mobilenetv3", "mobilenetv3", "MobileNetV3-Large", ("nanosam2-mbv3", "nanosam2_mobilenetv3")),
):
    register(ModelEntry(
        name=f"nanosam2-{hf}",
        family="nanosam2",
        builder=lambda input_size=1024, _b=backbone: build_nanosam2(_b, input_size),
        spec=sam2_image_spec(),
        description=f"nanosam2 student: {label} + FPN neck, SAM 2.1's heads and memory (distil it; no official .pt)",
        weights_note=_NANOSAM2_NOTE,
        aliases=aliases,
    ))
