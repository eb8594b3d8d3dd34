"""One distillation step of a tiny detector of every family for every method; gradients, adapters, the teacher cache."""
from __future__ import annotations

import pytest
import torch

from detectors.faster_rcnn import build_faster_rcnn
from detectors.fcos import build_fcos
from detectors.yolo import build_yolo
from methods.distill.distiller import Distiller, TeacherCache, parse_method
from study.cost import count_params

from helpers import DENSE_HP, SMALL, batch

HP = {"hinton": {"weight": 1.0, "temperature": 4.0}, "fitnets": {"weight": 100.0, "taps": ["c4", "p3"]},
      "at": {"weight": 1000.0, "p": 2, "taps": ["c3", "c5"]}, "nst": {"weight": 50.0, "taps": ["c3", "p4"]},
      "pkd": {"weight": 6.0, "taps": ["p3", "p4"]}, "cwd": {"weight": 10.0, "tau": 1.0, "taps": ["c5", "p5"]},
      "fgfi": {"weight": 1.0, "psi": 0.5, "taps": ["c3", "p3"]}, "ld": {"weight": 0.25, "temperature": 10.0}}


def pair(family="faster_rcnn"):
    torch.manual_seed(0)
    if family == "yolo":
        return build_yolo("yolov8p", 3), build_yolo("yolov8t", 3)
    if family == "fcos":
        return build_fcos("shallow", 3, fpn_channels=32), build_fcos("resnet18", 3, fpn_channels=64)
    student = build_faster_rcnn("shallow", 3, fpn_channels=8, roi_dim=16, **SMALL)
    teacher = build_faster_rcnn("resnet18", 3, fpn_channels=16, roi_dim=32, **SMALL)
    return student, teacher


@pytest.mark.parametrize("family", ["faster_rcnn", "yolo", "fcos"])
@pytest.mark.parametrize("method", ["hinton", "fitnets", "at", "nst", "hinton+at", "fitnets+nst", "pkd", "cwd", "fgfi",
                                    "fgfi+pkd", "ld"])
def test_one_distillation_step(family, method):
    student, teacher = pair(family)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    methods = {m: (HP if family == "faster_rcnn" else DENSE_HP)[m] for m in parse_method(method)}
    if method == "ld" and family != "yolo":  # box-edge distributions exist in YOLO's head only
        with pytest.raises(ValueError, match="ld needs a head that predicts box-edge distributions"):
            Distiller(student, TeacherCache(teacher), methods)
        return
    distiller = Distiller(student, TeacherCache(teacher), methods)
    distiller.train()
    assert not teacher.training  # the teacher stays in eval mode
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.01)
    images, targets = batch()
    losses = distiller(images, targets, keys=[(0, 0), (1, 0)])
    kd_terms = {k for k in losses if k.startswith("kd_")}
    expected = {f"kd_{m}" for m in methods if m in ("hinton", "ld")}
    for m, hp in methods.items():
        if m not in ("hinton", "ld"):
            expected |= {f"kd_{m}_{tap}" for tap in hp["taps"]}
    assert kd_terms == expected
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    kd_total = sum(losses[k] for k in kd_terms)
    kd_total.backward()
    student_grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert student_grads and any(g.abs().sum() > 0 for g in student_grads)
    for p in distiller.adapters.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    distiller.remove_hooks()


def test_fitnets_adapters_train_apart_and_are_not_in_the_deployed_student():
    student, teacher = pair()
    n_student = count_params(student)
    distiller = Distiller(student, TeacherCache(teacher), {"fitnets": HP["fitnets"]})
    # c4: 64 -> 256 channels (1x1 conv + BN), p3: 8 -> 16
    assert distiller.adapter_params() == (64 * 256 + 2 * 256) + (8 * 16 + 2 * 16)
    assert count_params(distiller) == n_student + distiller.adapter_params()
    assert count_params(student) == n_student
    assert not any("adapter" in k for k in student.state_dict())


def test_teacher_cache_is_exact_and_reused():
    student, teacher = pair()
    cache = TeacherCache(teacher)
    distiller = Distiller(student, cache, {"at": HP["at"]})
    distiller.train()
    images, targets = batch()
    first = distiller(images, targets, keys=[(0, 0), (1, 0)])["kd_at_c3"]
    assert (cache.misses, cache.hits) == (2, 0)
    second = distiller(images, targets, keys=[(0, 0), (1, 0)])["kd_at_c3"]
    assert (cache.misses, cache.hits) == (2, 2)
    uncached = distiller(images, targets, keys=None)["kd_at_c3"]
    assert torch.allclose(second, uncached, atol=1e-6) and torch.allclose(first, second, atol=1e-6)


def test_nst_teacher_kernel_is_cached_exactly():
    student, teacher = pair()
    distiller = Distiller(student, TeacherCache(teacher), {"nst": HP["nst"]})
    distiller.train()
    images, targets = batch()
    first = distiller(images, targets, keys=[(0, 0), (1, 0)])
    assert len(distiller._teacher_kernels) == 2 * len(HP["nst"]["taps"])  # per (tap, image, flip)
    second = distiller(images, targets, keys=[(0, 0), (1, 0)])
    uncached = distiller(images, targets, keys=None)
    for tap in HP["nst"]["taps"]:
        key = f"kd_nst_{tap}"
        assert torch.allclose(first[key], second[key], atol=1e-6)
        assert torch.allclose(second[key], uncached[key], atol=1e-6)


def test_cache_budget_is_respected():
    _, teacher = pair()
    cache = TeacherCache(teacher, budget_mb=0)
    cache.features(torch.rand(2, 3, 64, 96), [(0, 0), (1, 0)])
    assert cache.store == {} and cache.used_bytes == 0


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown distillation method 'hinton\\+crd'"):
        parse_method("hinton+crd")


def test_balance_measures_the_ratio_then_fixes_the_weight():
    student, teacher = pair()
    methods = {"pkd": dict(HP["pkd"], balance=0.5, balance_steps=2), "at": HP["at"]}
    distiller = Distiller(student, TeacherCache(teacher), methods)
    distiller.train()
    assert distiller.clip_apart  # balanced terms are clipped apart from the detector's loss
    images, targets = batch()
    own, raw = [], []
    for _ in range(2):  # the measurement window: pkd computed, weighted 0; at keeps its raw weight
        losses = distiller(images, targets)
        own.append(float(sum(v.detach() for k, v in losses.items() if not k.startswith("kd_"))))
        raw.append(float(sum(distiller.last_raw["pkd"].values())))
        assert all(float(losses[k].detach()) == 0.0 for k in losses if k.startswith("kd_pkd"))
        assert float(losses["kd_at_c3"]) == pytest.approx(1000.0 * float(distiller.last_raw["at"]["kd_at_c3"]))
    weight = distiller.resolved_weights()["pkd"]
    assert weight == pytest.approx(0.5 * (sum(own) / 2) / (sum(raw) / 2), rel=1e-5)
    assert distiller.resolved_weights()["at"] == 1000.0
    losses = distiller(images, targets)  # from now on: the fixed weight
    for tap in HP["pkd"]["taps"]:
        assert float(losses[f"kd_pkd_{tap}"]) == pytest.approx(
            weight * float(distiller.last_raw["pkd"][f"kd_pkd_{tap}"]), rel=1e-5)


def test_rebalance_measures_every_block_and_uses_it_for_the_next():
    student, teacher = pair()
    distiller = Distiller(student, TeacherCache(teacher), {"pkd": dict(HP["pkd"], balance=0.5, balance_steps=2,
                                                                          rebalance=2)})
    distiller.train()
    images, targets = batch()
    own, raw, used = [], [], []
    for _ in range(6):  # window (steps 1-2), then blocks of 2 steps: 3-4 with w1, 5-6 with w2
        losses = distiller(images, targets)
        own.append(float(sum(v.detach() for k, v in losses.items() if not k.startswith("kd_"))))
        raw.append(float(sum(distiller.last_raw["pkd"].values())))
        used.append(float(sum(v.detach() for k, v in losses.items() if k.startswith("kd_"))) / raw[-1])
        student.zero_grad()
        sum(losses.values()).backward()  # the student changes, so every block's ratio is its own
        with torch.no_grad():
            for p in student.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
    ratio = [0.5 * (own[i] + own[i + 1]) / (raw[i] + raw[i + 1]) for i in (0, 2, 4)]
    history = distiller.resolved_weights()["pkd"]
    assert history == pytest.approx(ratio, rel=1e-4) and len(set(history)) == 3
    assert used[:2] == [0.0, 0.0]
    assert used[2:] == pytest.approx([ratio[0], ratio[0], ratio[1], ratio[1]], rel=1e-4)


def test_rebalance_needs_balance_and_a_block_length():
    student, teacher = pair()
    with pytest.raises(ValueError, match="rebalance needs balance"):
        Distiller(student, TeacherCache(teacher), {"pkd": dict(HP["pkd"], rebalance=2)})
    with pytest.raises(ValueError, match="rebalance must be a number of steps"):
        Distiller(student, TeacherCache(teacher), {"pkd": dict(HP["pkd"], balance=0.5, rebalance="epoch")})


def test_warmup_ramps_the_weight_linearly():
    student, teacher = pair()
    distiller = Distiller(student, TeacherCache(teacher), {"at": dict(HP["at"], warmup_epochs=1)}, steps_per_epoch=4)
    distiller.train()
    images, targets = batch()
    for step in range(1, 6):  # weight x step / 4, then x 1
        losses = distiller(images, targets)
        factor = min(1.0, step / 4)
        assert float(losses["kd_at_c3"]) == pytest.approx(1000.0 * factor * float(distiller.last_raw["at"]["kd_at_c3"]))


@pytest.mark.parametrize("method", ["hinton", "pkd", "at"])
def test_terms_are_fp32_under_bf16_autocast_and_match_fp32(method):
    """Under bf16 autocast (train.bf16_on_cpu) the detector runs in bf16 but the distillation terms are computed in
    fp32 from its outputs: each term equals the term computed in fp32 from the same bf16 features to fp32 rounding."""
    student, teacher = pair()
    distiller = Distiller(student, TeacherCache(teacher), {method: HP[method]})
    distiller.train()
    images, targets = batch()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = distiller(images, targets, keys=None)
    kd = {k: v for k, v in losses.items() if k.startswith("kd_")}
    assert kd and all(v.dtype == torch.float32 and torch.isfinite(v) for v in kd.values())
    assert any(v.dtype == torch.bfloat16 for v in distiller._captured["taps"].values())  # the detector ran in bf16
    # the same terms from the same bf16 student and teacher tensors, without autocast: fp32 arithmetic both times
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            teacher_out = distiller.teacher_cache.features(distiller._captured["x"], None)
        assert any(v.dtype == torch.bfloat16 for v in teacher_out.values())
        again = distiller._raw_terms(method, HP[method], teacher_out, targets, None)
    for k, v in again.items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(kd[k].detach() / distiller.weights[method], v, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_label_smoothing_needs_no_teacher_and_gives_torchs_smoothed_cross_entropy(monkeypatch, eps):
    """The ``ls`` control: no teacher; the classifier's loss plus its term equals ``F.cross_entropy`` with
    ``label_smoothing`` over the RoIs the head sampled (their labels caught where torchvision computes its loss)."""
    import torchvision.models.detection.roi_heads as roi_heads
    seen = {}
    original = roi_heads.fastrcnn_loss

    def catch(class_logits, box_regression, labels, regression_targets):
        seen["logits"], seen["labels"] = class_logits, torch.cat(labels)
        return original(class_logits, box_regression, labels, regression_targets)

    monkeypatch.setattr(roi_heads, "fastrcnn_loss", catch)
    student, _ = pair()
    distiller = Distiller(student, None, {"ls": {"weight": eps}})
    distiller.train()
    images, targets = batch()
    losses = distiller(images, targets, keys=None)
    expected = torch.nn.functional.cross_entropy(seen["logits"], seen["labels"], label_smoothing=eps)
    torch.testing.assert_close(losses["loss_classifier"] + losses["kd_ls"], expected, rtol=1e-5, atol=1e-6)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.roi_heads.box_predictor.parameters())


def test_label_smoothing_is_refused_where_it_cannot_work():
    student, teacher = pair("yolo")
    with pytest.raises(ValueError, match="ls smooths a softmax RoI classifier"):
        Distiller(student, None, {"ls": {"weight": 0.1}})
    student, _ = pair()
    with pytest.raises(ValueError, match="hinton needs a teacher"):
        Distiller(student, None, {"hinton": HP["hinton"], "ls": {"weight": 0.1}})
