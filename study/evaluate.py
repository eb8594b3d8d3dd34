"""COCO evaluation with pycocotools: mAP@[.5:.95], AP50, AP75, AP small/medium/large and per-class AP.

Ground truth and detections are both in original image pixels (detections are mapped back from the canvas), so
COCO's small/medium/large area ranges mean what they say.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from study.images import ImageSet

METRIC_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


def coco_ground_truth(image_set: ImageSet, class_names: list[str]) -> COCO:
    images, annotations = [], []
    for i, s in enumerate(image_set.samples):
        images.append({"id": i, "width": s.width, "height": s.height, "file_name": s.image_path.name})
        for box, label in zip(s.boxes.tolist(), s.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_metrics(gt: COCO, detections: list[dict], class_names: list[str]) -> dict:
    """Metrics for ``detections`` (COCO result dicts: image_id, category_id, bbox xywh, score)."""
    empty = {name: 0.0 for name in METRIC_NAMES} | {"per_class_ap": {n: 0.0 for n in class_names}}
    if not detections:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) if v >= 0 else None for v in ev.stats[:6]]  # -1: no ground truth of that size
    precision = ev.eval["precision"]  # (iou, recall, class, area, maxdets)
    per_class = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
    return dict(zip(METRIC_NAMES, stats)) | {"per_class_ap": per_class}


def map_only(ev: COCOeval) -> COCOeval:
    """``ev`` set to evaluate area range 'all' at 100 detections per image only: what mAP@[.5:.95] reads."""
    p = ev.params
    p.areaRng, p.areaRngLbl, p.maxDets = [p.areaRng[p.areaRngLbl.index("all")]], ["all"], [p.maxDets[-1]]
    return ev


def coco_map(gt: COCO, detections: list[dict]) -> float | None:
    """COCO mAP@[.5:.95] alone: :func:`coco_metrics`'s ``map``, bit for bit, for a quarter of the matching.

    mAP is the mean of COCOeval's ``precision[t, r, k, area 'all', 100 detections]`` over its entries > -1 (as
    ``summarize`` takes it), and COCOeval matches every (category, area range, image) apart; evaluating the one
    range and the one limit runs the same arithmetic on the same numbers. Per-epoch validation uses it."""
    if not detections:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        ev = map_only(COCOeval(gt, gt.loadRes(detections), "bbox"))
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]
    kept = precision[precision > -1]
    return float(np.mean(kept)) if len(kept) else None  # (None: no ground truth, as in coco_metrics)


@torch.inference_mode()
def predict(model, image_set: ImageSet, device: torch.device, batch_size: int = 8) -> list[dict]:
    """Run ``model`` over ``image_set`` and return COCO result dicts in original image pixels."""
    model.eval()
    results = []
    for start in range(0, len(image_set), batch_size):
        batch = image_set.images[start:start + batch_size].to(device).float().div_(255)
        outputs = model(list(batch))
        for offset, out in enumerate(outputs):
            i = start + offset
            boxes = (out["boxes"].float().cpu() / image_set.scales[i]).numpy()
            s = image_set.samples[i]
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, s.width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, s.height)
            for box, label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                results.append({"image_id": i, "category_id": int(label), "score": float(score),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    return results


def save_detections(path: Path, detections: list[dict]) -> None:
    """Keep a run's test detections (gzipped JSON rows ``[image_id, category_id, score, x, y, w, h]``; scores to
    1e-4, boxes to 0.1 px), so that test-image resampling (:mod:`study.bootstrap`) can recompute its mAP later."""
    rows = [[d["image_id"], d["category_id"], round(d["score"], 4)] + [round(v, 1) for v in d["bbox"]]
            for d in detections]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump(rows, f, separators=(",", ":"))


def load_detections(path: Path) -> list[dict]:
    """The COCO result dicts :func:`save_detections` kept."""
    with gzip.open(path, "rt") as f:
        return [{"image_id": r[0], "category_id": r[1], "score": r[2], "bbox": r[3:]} for r in json.load(f)]


def evaluate(model, image_set: ImageSet, class_names: list[str], device: torch.device, gt: COCO | None = None,
             save_to: Path | None = None) -> dict:
    """COCO metrics of ``model`` on ``image_set``; its detections are kept at ``save_to`` where given."""
    gt = gt or coco_ground_truth(image_set, class_names)
    detections = predict(model, image_set, device)
    if save_to is not None:
        save_detections(save_to, detections)
    return coco_metrics(gt, detections, class_names)


def evaluate_map(model, image_set: ImageSet, class_names: list[str], device: torch.device,
                 gt: COCO | None = None) -> float | None:
    """COCO mAP@[.5:.95] of ``model`` on ``image_set`` (:func:`coco_map`: what ``evaluate(...)["map"]`` gives)."""
    return coco_map(gt or coco_ground_truth(image_set, class_names), predict(model, image_set, device))
