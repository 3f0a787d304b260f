"""Ray for scale (``swiftsam label --ray``, ``swiftsam serve --ray``) on a local Ray instance on this machine.

One Ray for the module (starting it takes seconds); each test compares the Ray path with the plain one on the same
inputs. Skipped where Ray is not installed (``pip install 'swiftsam[ray]'``; the ``test`` extra has it)."""

from __future__ import annotations

import io
import json
import socket

import numpy as np
import pytest

from swiftsam.cli import main
from tests.conftest import SHARED

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'swiftsam[ray]'")

COCO = SHARED / "coco-mini"
ANNOTATIONS = COCO / "annotations" / "instances_val2017.json"
MODEL = ["--model", "swiftsam-r18", "--input-size", "256", "--device", "cpu", "--no-progress"]
pytestmark = pytest.mark.skipif(not ANNOTATIONS.exists(), reason="needs ../shared/data/coco-mini")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 logical CPUs: one actor or replica at a time, small object store, no dashboard)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024, log_to_driver=False,
             configure_logging=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def coco4(tmp_path_factory):
    """Four coco-mini val images and detections (their 3 largest ground-truth boxes each) as COCO results."""
    coco = json.loads(ANNOTATIONS.read_text())
    images = sorted(coco["images"], key=lambda im: im["file_name"])[:4]
    dets = []
    for im in images:
        anns = sorted((a for a in coco["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd")),
                      key=lambda a: -a["area"])[:3]
        dets += [{"image_id": im["id"], "bbox": a["bbox"], "score": 1.0, "category_id": a["category_id"]} for a in anns]
    d = tmp_path_factory.mktemp("coco4")
    (d / "dets.json").write_text(json.dumps(dets))
    return [COCO / "val2017" / im["file_name"] for im in images], d / "dets.json"


def _manifest(path, images) -> str:
    path.write_text("".join(f"{p}\n" for p in images))
    return str(path)


def _label(manifest: str, dets, out, *extra) -> int:
    return main(["label", manifest, "--detections", str(dets), "--out", str(out), *MODEL, *extra])  # ids: file names


def _same_masks(a: list[dict], b: list[dict]) -> None:
    """The same records (image, category, bbox); masks equal but for float rounding at the threshold (the actor's
    torch may run on other thread counts), scores within rounding."""
    from pycocotools import mask as mask_utils

    assert [(r["image_id"], r["category_id"], r["file_name"]) for r in a] == \
        [(r["image_id"], r["category_id"], r["file_name"]) for r in b]
    for ra, rb in zip(a, b):
        ma, mb = mask_utils.decode(ra["segmentation"]), mask_utils.decode(rb["segmentation"])
        assert ma.shape == mb.shape
        assert (ma != mb).sum() <= max(2, 0.002 * ma.sum())
        assert ra["score"] == pytest.approx(rb["score"], abs=1e-3)


def test_label_ray_matches_plain_resumes_and_reports_bad_images(local_ray, coco4, tmp_path, capsys):
    images, dets = coco4
    broken = tmp_path / "000000999999.jpg"
    broken.write_bytes(b"not a jpeg")
    every = _manifest(tmp_path / "all.txt", [*images, broken])
    plain = tmp_path / "plain.json"
    assert _label(every, dets, plain) == 0
    capsys.readouterr()

    # a first Ray run on two images (as a run stopped half way), then all: only the other two are labelled
    out = tmp_path / "ray.json"
    assert _label(_manifest(tmp_path / "two.txt", images[:2]), dets, out, "--ray") == 0
    assert "(0 resumed)" in capsys.readouterr().out
    assert _label(every, dets, out, "--ray") == 0
    captured = capsys.readouterr()
    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert summary["resumed"] == 2 and summary["done"] == 2
    # the bad image: skipped and reported as without Ray
    assert [f["image"] for f in summary["failed"]] == [broken.name]
    assert "1 image(s) failed" in captured.err and broken.name in captured.err
    assert summary["failed"] == json.loads((tmp_path / "plain.summary.json").read_text())["failed"]
    ray_results, plain_results = json.loads(out.read_text()), json.loads(plain.read_text())
    assert {r["file_name"] for r in plain_results} == {p.name for p in images}
    _same_masks(ray_results, plain_results)
    # the progress log is the plain command's: a plain run resumes all four
    assert _label(every, dets, out) == 0
    assert "(4 resumed)" in capsys.readouterr().out


def test_label_ray_options_checked(local_ray, tmp_path, coco4, capsys):
    images, dets = coco4
    manifest = _manifest(tmp_path / "m.txt", images[:1])
    assert _label(manifest, dets, tmp_path / "o.json", "--ray-concurrency", "2") == 2
    assert "add --ray" in capsys.readouterr().err
    assert _label(manifest, dets, tmp_path / "o.json", "--ray", "--ray-concurrency", "0") == 2
    assert "--ray-concurrency must be 1 or more" in capsys.readouterr().err
    assert _label(manifest, dets, tmp_path / "o.json", "--ray", "--ray-concurrency", "3") == 2
    assert "has 2 CPU(s) but 3 actor(s) need 3" in capsys.readouterr().err
    dup = tmp_path / "dup.txt"
    dup.write_text(f"{images[0]}\n{tmp_path / images[0].name}\n")
    assert _label(str(dup), dets, tmp_path / "o.json") == 2
    assert "same file name" in capsys.readouterr().err
    # a model the actors cannot load: the reason, exit 2 (not Ray's traceback of a failed actor)
    assert _label(manifest, dets, tmp_path / "o.json", "--ray", "--checkpoint", str(tmp_path / "none.pt")) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_ray_answers_as_the_plain_app(local_ray, monkeypatch, capsys):
    """``swiftsam serve --ray`` with one replica: /v1/segment through Ray Serve's proxy, as the plain app answers."""
    import httpx
    from fastapi.testclient import TestClient
    from PIL import Image

    from swiftsam import load
    from swiftsam.cli import serve as serve_cli
    from swiftsam.predictor import Predictor
    from swiftsam.serve.app import create_app
    from swiftsam.serve.limits import ServeConfig

    rng = np.random.RandomState(0)
    img = np.zeros((96, 128, 3), np.uint8) + 30
    img[20:60, 30:90] = rng.randint(150, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    form = {"files": {"image": ("image.png", buf.getvalue(), "image/png")},
            "data": {"prompts": '{"boxes": [[25, 15, 95, 65]]}'}}
    port = _free_port()
    answers = {}

    def ask_then_stop():  # what `swiftsam serve --ray` waits in: ask the deployment, then Ctrl-C
        url = f"http://127.0.0.1:{port}"
        answers["segment"] = httpx.post(url + "/v1/segment", timeout=120, **form)
        answers["bad"] = httpx.post(url + "/v1/segment", timeout=120, files={"image": ("x.png", b"nope", "image/png")},
                                    data=form["data"])
        answers["health"] = httpx.get(url + "/healthz", timeout=60)
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_cli, "_wait", ask_then_stop)
    assert main(["serve", "--ray", "--replicas", "1", "--port", str(port), "--model", "swiftsam-r18",
                 "--input-size", "256", "--device", "cpu"]) == 0
    assert "1 replica(s) (CPU each)" in capsys.readouterr().out
    predictor = Predictor(load("swiftsam-r18", input_size=256, device="cpu"))
    with TestClient(create_app(predictor, ServeConfig(max_batch=1))) as client:
        direct = client.post("/v1/segment", **form)
    got = answers["segment"]
    assert got.status_code == 200, got.text
    assert got.json()["image_size"] == direct.json()["image_size"]
    a, b = got.json()["masks"], direct.json()["masks"]
    assert len(a) == len(b) == 1
    from swiftsam.masks import decode_rle

    ma, mb = decode_rle(a[0]), decode_rle(b[0])
    assert (ma != mb).sum() <= max(2, 0.002 * mb.sum()) and mb.any()
    assert answers["bad"].status_code == 400 and "not an image" in answers["bad"].json()["detail"]
    assert answers["health"].json()["status"] == "ok"


def test_serve_ray_settings_checked(local_ray, tmp_path, capsys):
    """Bad replica settings: exit 2 with the reason, before a replica starts; a replica that cannot load its model:
    its reason, exit 2."""
    assert main(["serve", "--ray", "--replicas", "0"]) == 2
    assert "replicas must be a number >= 1 or 'auto'" in capsys.readouterr().err
    assert main(["serve", "--ray", "--replicas", "auto", "--min-replicas", "3", "--max-replicas", "2"]) == 2
    assert "min replicas <= max replicas" in capsys.readouterr().err
    assert main(["serve", "--replicas", "2"]) == 2
    assert "add --ray" in capsys.readouterr().err
    # more than the cluster has (here: 2 CPUs, no GPU): an error, not a deployment waiting for ever
    assert main(["serve", "--ray", "--replicas", "3", "--port", str(_free_port())]) == 2
    assert "has 2 CPU(s) but 3 replica(s) need 3" in capsys.readouterr().err
    assert main(["serve", "--ray", "--device", "cuda", "--port", str(_free_port())]) == 2
    assert "has 0 GPU(s) but 1 replica(s) need 1" in capsys.readouterr().err
    assert main(["serve", "--ray", "--port", str(_free_port()), "--checkpoint", str(tmp_path / "none.pt"),
                 "--input-size", "256", "--device", "cpu"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_deployment_options_one_gpu_per_replica_and_autoscaling():
    from swiftsam.serve.ray_serve import deployment_options

    fixed = deployment_options(3, gpus_per_replica=1.0)
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"]["num_gpus"] == 1.0
    auto = deployment_options("auto", 1.0, min_replicas=2, max_replicas=8, target_ongoing_requests=4)
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 8, "initial_replicas": 2,
                                          "target_ongoing_requests": 4}


def _everything(source, out, *extra) -> int:
    return main(["everything", str(source), "--out", str(out), *MODEL, "--points-per-side", "4", *extra])


def test_everything_ray_matches_plain_and_resumes(local_ray, coco4, tmp_path, capsys):
    """``everything --ray``: the plain run's per-image results (masks equal but for float rounding), one merged
    summary of the run, and a second run skips every image."""
    from pycocotools import mask as mask_utils

    src = tmp_path / "src"
    src.mkdir()
    for p in coco4[0][:3]:
        (src / p.name).symlink_to(p)
    plain, out = tmp_path / "plain", tmp_path / "ray"
    assert _everything(src, plain) == 0
    capsys.readouterr()
    assert _everything(src, out, "--ray") == 0
    assert "3 image(s) segmented, 0 already done" in capsys.readouterr().out
    summary = json.loads((out / "everything.summary.json").read_text())
    assert summary["images"] == 3 and summary["done"] == 3 and summary["skipped"] == 0
    assert summary == json.loads((plain / "everything.summary.json").read_text())
    n = 0
    for p in sorted(src.iterdir()):
        a = json.loads((out / f"{p.stem}.json").read_text())
        b = json.loads((plain / f"{p.stem}.json").read_text())
        assert a["image"] == b["image"] == p.name and (out / f"{p.stem}.png").exists()
        assert len(a["annotations"]) == len(b["annotations"])
        for ra, rb in zip(a["annotations"], b["annotations"]):
            ma, mb = mask_utils.decode(ra["segmentation"]), mask_utils.decode(rb["segmentation"])
            assert ma.shape == mb.shape
            assert (ma != mb).sum() <= max(2, 0.002 * ma.sum())
            assert ra["predicted_iou"] == pytest.approx(rb["predicted_iou"], abs=1e-3)
            n += 1
    assert n > 0  # something to compare
    # a second run: all three already done (the results of the first, and the merged summary again)
    assert _everything(src, out, "--ray") == 0
    assert "0 image(s) segmented, 3 already done" in capsys.readouterr().out
    summary = json.loads((out / "everything.summary.json").read_text())
    assert summary["images"] == 3 and summary["skipped"] == 3 and summary["done"] == 0


def test_everything_ray_options_checked(local_ray, coco4, tmp_path, capsys):
    image = coco4[0][0]
    assert _everything(image, tmp_path / "o", "--ray", "--ray-concurrency", "0") == 2
    assert "--ray-concurrency must be 1 or more" in capsys.readouterr().err
    assert _everything(image, tmp_path / "o", "--ray-concurrency", "2") == 2
    assert "add --ray" in capsys.readouterr().err
