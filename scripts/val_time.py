"""Time one validation pass of finished runs, as a training worker does it (one thread): the forward passes, and
COCOeval's matching in full (``coco_metrics``, every area range) and for mAP alone (``coco_map``, what validation
uses), which must give the same mAP. Usage: python scripts/val_time.py PROFILE FOLDER RUN_ID [RUN_ID ...] (run from
the repository root)."""
import sys
import time
from pathlib import Path

import torch

from study.defaults import load_profile
from study.evaluate import coco_ground_truth, coco_map, coco_metrics, predict
from study.runner import Study


def best_of(repeats: int, fn):
    """(the least seconds of ``repeats`` calls of ``fn``, its last result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(profile: str, folder: str, run_ids: list[str], repeats: int = 3) -> None:
    torch.set_num_threads(1)
    study = Study(load_profile(profile), Path(folder), progress=False)
    val, names = study.image_set("val"), study.data().class_names
    gt = coco_ground_truth(val, names)
    for run_id in run_ids:
        model = study.load_finished(run_id)
        forward_s, detections = best_of(repeats, lambda: predict(model, val, torch.device("cpu")))
        full_s, metrics = best_of(repeats, lambda: coco_metrics(gt, detections, names))
        alone_s, map_alone = best_of(repeats, lambda: coco_map(gt, detections))
        same = "the same" if map_alone == metrics["map"] else f"DIFFERENT ({map_alone!r} against {metrics['map']!r})"
        print(f"{run_id}: {len(val)} images, {len(detections)} detections; forward {forward_s:.2f} s, matching "
              f"{full_s:.2f} s in full, {alone_s:.2f} s for mAP alone (best of {repeats}); val mAP {metrics['map']:.4f}, "
              f"{same}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
