"""Test harness. The authors' reference packages import torchvision and timm, which do not work
with the CPU torch used here; this file stubs the few functions they import, for tests only."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


# torchvision's transforms as sam2 uses them (SAM2Transforms scripts Resize + Normalize with torch.jit, so
# they are nn.Modules defined at module level): tensor Resize is bilinear with antialias, as torchvision's
class _ToTensor(torch.nn.Module):
    def forward(self, arr):
        return torch.from_numpy(np.asarray(arr).copy()).permute(2, 0, 1).float().div(255)


class _Normalize(torch.nn.Module):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class _Resize(torch.nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False,
                                               antialias=True)[0]


def _install_torchvision_stub() -> None:
    def resize(img, size, *args, **kwargs):
        return img.resize((size[1], size[0]), Image.BILINEAR)

    def to_pil_image(arr):
        return Image.fromarray(np.asarray(arr))

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    def box_area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def batched_nms(boxes, scores, idxs, iou_threshold):
        keep = []
        order = torch.argsort(scores, descending=True).tolist()
        area = box_area(boxes)
        suppressed = set()
        for i in order:
            if i in suppressed:
                continue
            keep.append(i)
            for j in order:
                if j in suppressed or j == i or idxs[j] != idxs[i]:
                    continue
                lt = torch.maximum(boxes[i, :2], boxes[j, :2])
                rb = torch.minimum(boxes[i, 2:], boxes[j, 2:])
                inter = (rb - lt).clamp(min=0).prod()
                if inter / (area[i] + area[j] - inter) > iou_threshold:
                    suppressed.add(j)
        return torch.tensor(keep, dtype=torch.int64)

    tv = _module("torchvision")
    tv.transforms = _module("torchvision.transforms", Compose=Compose, ToTensor=_ToTensor, Normalize=_Normalize,
                            Resize=_Resize)
    tv.transforms.functional = _module("torchvision.transforms.functional", resize=resize, to_pil_image=to_pil_image)
    tv.ops = _module("torchvision.ops")
    tv.ops.boxes = _module("torchvision.ops.boxes", batched_nms=batched_nms, box_area=box_area)


def _install_timm_stub() -> None:
    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    def trunc_normal_(t, std=1.0, **kwargs):
        with torch.no_grad():
            return t.normal_(0, std).clamp_(-2 * std, 2 * std)

    timm = _module("timm")
    timm.models = _module("timm.models")
    timm.models.layers = _module(
        "timm.models.layers", DropPath=DropPath, to_2tuple=lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x),
        trunc_normal_=trunc_normal_,
    )
    timm.models.registry = _module("timm.models.registry", register_model=lambda fn: fn)


def _usable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:
        sys.modules.pop(name, None)
        return False


if not _usable("torchvision"):
    _install_torchvision_stub()
if not _usable("timm"):
    _install_timm_stub()


def have(pkg: str) -> bool:
    return importlib.util.find_spec(pkg) is not None


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def _session_home(tmp_path_factory):
    return tmp_path_factory.mktemp("swiftsam-home")


@pytest.fixture(autouse=True)
def _isolated_home(_session_home, monkeypatch):
    """Tests never touch the user's cache: exported graphs and checkpoints go to a session folder. Models
    loaded with device "auto" stay on the CPU on a GPU machine too (the tests compare with CPU tensors)."""
    monkeypatch.setenv("SWIFTSAM_HOME", str(_session_home))
    monkeypatch.setenv("SWIFTSAM_DEVICE", "cpu")


@pytest.fixture
def swiftsam_home(tmp_path, monkeypatch):
    """An empty checkpoint cache for the test."""
    monkeypatch.setenv("SWIFTSAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SWIFTSAM_MIRROR", raising=False)
    return tmp_path / "home"


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every saved tensor random, well-scaled values (BN statistics included). Non-persistent
    buffers (pixel mean/std, index tables) are left alone: they are not weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim <= 1:
                base = 1.0 if name.endswith("weight") else 0.0
                t.copy_(base + 0.1 * torch.randn(t.shape, generator=g))
            else:
                fan_in = max(1, math.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in))
    return model


def test_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (structured enough for meaningful masks)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


test_image.__test__ = False  # not a pytest test


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared,
    loaded machine torch's thread pool makes small models many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_sam2(input_size: int = 64, d: int = 32, mem: int = 8):
    """A SAM 2 of the real architecture with small widths and one layer per transformer (video memory tests that
    run thousands of frames; fast to compile). Objects present: the object-score bias is raised."""
    from swiftsam.modeling.encoders.fpn_neck import FpnNeck, Sam2ImageEncoder
    from swiftsam.modeling.encoders.hiera import Hiera
    from swiftsam.modeling.memory_attention import build_memory_attention
    from swiftsam.modeling.memory_encoder import build_memory_encoder
    from swiftsam.modeling.position_encoding import PositionEmbeddingSine
    from swiftsam.modeling.prompt_encoder import PromptEncoder
    from swiftsam.modeling.sam2 import Sam2, sam2_image_spec
    from swiftsam.modeling.sam2_mask_decoder import Sam2MaskDecoder, sam2_two_way_transformer

    trunk = Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(), window_spec=(4, 4, 4, 2),
                  window_pos_embed_bkg_spatial_size=(2, 2))
    neck = FpnNeck(d_model=d, backbone_channel_list=trunk.channel_list, fpn_top_down_levels=(2, 3),
                   position_encoding=PositionEmbeddingSine(d, temperature=10000, normalize=True, scale=None))
    g = input_size // 16
    prompts = PromptEncoder(embed_dim=d, image_embedding_size=(g, g), input_image_size=(input_size, input_size),
                            mask_in_chans=4)
    decoder = Sam2MaskDecoder(transformer_dim=d, transformer=sam2_two_way_transformer(1, d, 2, 2 * d),
                              iou_head_hidden_dim=d, dynamic_multimask_via_stability=True)
    model = Sam2(Sam2ImageEncoder(trunk, neck), prompts, decoder,
                 build_memory_attention(d_model=d, mem_dim=mem, num_layers=1, dim_feedforward=2 * d),
                 build_memory_encoder(out_dim=mem, in_dim=d), sam2_image_spec(input_size), hidden_dim=d, mem_dim=mem)
    model = randomize_(model, seed=1).eval()
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 2.0
    return model
