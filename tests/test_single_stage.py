"""Single-stage detectors: ultralytics YOLO from its YAMLs (offline, nothing written outside our folders) and
torchvision FCOS over our backbones; forward/backward, eval output, target conversion, the dense distillation
specifics (one step per method and family is in test_distiller.py), and ultralytics' own trainer on a tiny dataset
without the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from detectors.fcos import build_fcos
from detectors.yolo import YOLO_MODELS, build_yolo, targets_to_yolo
from methods.distill.distiller import Distiller, TeacherCache
from study.cost import count_params

from helpers import DENSE_HP as HP, batch


def pair(family: str):
    torch.manual_seed(0)
    if family == "yolo":
        return build_yolo("yolov8p", 3), build_yolo("yolov8t", 3)
    return build_fcos("shallow", 3, fpn_channels=32), build_fcos("resnet18", 3, fpn_channels=64)


@pytest.mark.parametrize("name", sorted(YOLO_MODELS))
def test_every_yolo_builds_from_its_yaml_without_weights(name):
    model = build_yolo(name, 3)
    assert model.detect.nc == 3
    assert list(model.detect.stride) == [8.0, 16.0, 32.0]


def test_yolo_sizes_are_ultralytics_own():
    # ultralytics' YAML comments give 3,157,200 / 11,166,560 parameters for 80 classes; with 3 classes the
    # class convolutions are smaller. The students are much smaller than the teacher.
    counts = {name: count_params(build_yolo(name, 3)) for name in ("yolov8n", "yolov8s", "yolov8t", "yolov8p")}
    assert counts["yolov8n"] == 3_011_433
    assert counts["yolov8s"] == 11_136_761
    assert counts["yolov8p"] < counts["yolov8t"] < counts["yolov8n"] / 3 < counts["yolov8s"] / 10


@pytest.mark.parametrize("family", ["yolo", "fcos"])
def test_forward_backward_and_eval(family):
    model, _ = pair(family)
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert len(losses) == 3 and all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len([p for p in model.parameters() if p.requires_grad])
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out in outputs:
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
        if len(out["labels"]):
            assert out["labels"].min() >= 1 and out["labels"].max() <= 3  # 1-based, as torchvision's


def test_targets_to_yolo_by_hand():
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 48.0, 32.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
               {"boxes": torch.tensor([[24.0, 16.0, 96.0, 64.0]]), "labels": torch.tensor([1])}]
    batch_dict = targets_to_yolo(targets, height=64, width=96, device="cpu")
    assert batch_dict["batch_idx"].tolist() == [0.0, 2.0]
    assert batch_dict["cls"].tolist() == [1.0, 0.0]
    assert torch.allclose(batch_dict["bboxes"], torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.625, 0.625, 0.75, 0.75]]))


def test_yolo_loss_is_ultralytics_own_criterion():
    """Our targets, converted, give exactly what ultralytics' criterion gives on its own batch format (summed over
    the batch: it multiplies by the batch size)."""
    from ultralytics.utils.loss import v8DetectionLoss

    model, _ = pair("yolo")
    images, targets = batch()
    model.train()
    ours = model(images, targets)
    by_hand = {"batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0]), "cls": torch.tensor([0.0, 2.0, 0.0, 2.0]),
               "bboxes": torch.tensor([[17 / 96, 23 / 64, 26 / 96, 34 / 64], [55 / 96, 30 / 64, 30 / 96, 40 / 64]] * 2)}
    reference, _ = v8DetectionLoss(model.model)(model.model(torch.stack(images)), by_hand)
    assert torch.allclose(torch.stack([ours["loss_box"], ours["loss_cls"], ours["loss_dfl"]]), reference, rtol=1e-5)


def test_yolo_distillation_terms_are_summed_over_the_batch_too():
    student, teacher = pair("yolo")
    distiller = Distiller(student, TeacherCache(teacher), {"at": HP["at"]})
    distiller.train()
    images, targets = batch()
    one = distiller(images[:1], targets[:1])["kd_at_p3"]
    two = distiller(images[:1] * 2, targets[:1] * 2)["kd_at_p3"]
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-4)


@pytest.mark.parametrize("family", ["yolo", "fcos"])
def test_dense_logits_line_up_with_the_teachers(family):
    """A teacher that is an exact copy of the student gives the same dense logits, location by location, and a
    zero Hinton term: the student's hooked logits and the teacher's cached ones are in the same order."""
    student, _ = pair(family)
    teacher = pair(family)[0]
    teacher.load_state_dict(student.state_dict())
    distiller = Distiller(student, TeacherCache(teacher), {"hinton": HP["hinton"]})
    student.eval()  # BN as the teacher's
    images, _ = batch()
    with torch.no_grad():
        student(images)
        s = distiller._captured["dense_logits"]
        t = distiller.teacher_cache.features(distiller._captured["x"], None)["dense_logits"]
        assert s.shape == t.shape and torch.allclose(s, t, atol=1e-5)
        term = distiller._raw_terms("hinton", HP["hinton"], {"dense_logits": t}, [], None)["kd_hinton"]
        assert term.item() == pytest.approx(0.0, abs=1e-5)
    distiller.remove_hooks()


def test_family_mismatch_is_named():
    with pytest.raises(ValueError, match="a yolo student needs a yolo teacher"):
        Distiller(pair("yolo")[0], TeacherCache(pair("fcos")[1]), {"hinton": HP["hinton"]})


def test_ultralytics_settings_stay_out_of_the_home_directory():
    from ultralytics.utils import USER_CONFIG_DIR

    assert Path(os.environ["YOLO_CONFIG_DIR"]) in Path(USER_CONFIG_DIR).parents
    assert Path.home() not in Path(USER_CONFIG_DIR).parents


def test_ultralytics_own_trainer_runs_offline_in_its_folder(tiny_voc, tmp_path, monkeypatch):
    """The reference trainer used by the parity check and the benchmark: no network, no files elsewhere, even
    with a relative output folder (ultralytics would put that under its own runs/ folder)."""
    from study.data import load_dataset
    from study.bench.reference_tools import ultralytics_train

    data = load_dataset(f"voc:{tiny_voc}")
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    result = ultralytics_train(data, "yolov8n", image_size=64, epochs=1, seed=0, batch_size=4, out=Path("u"),
                               workers=0)
    assert set(tmp_path.iterdir()) == before | {tmp_path / "u"}  # no runs/ folder or downloads next to us
    assert (tmp_path / "u" / "train" / "weights" / "best.pt").is_file()
    assert result["img_s"] > 0 and 0 <= result["own_map"] <= 1
    assert (tmp_path / "u" / "data" / "images" / "train").is_dir()
    assert all(p.is_symlink() for p in (tmp_path / "u" / "data" / "images" / "train").iterdir())  # not copied
    result["detector"].eval()
    with torch.no_grad():
        out = result["detector"]([torch.rand(3, 64, 64)])
    assert out[0]["boxes"].shape[1] == 4
