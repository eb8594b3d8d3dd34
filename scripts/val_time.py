"""Time one validation pass of finished runs, as a training worker does it (one thread): what validating less often
would save. Usage: python scripts/val_time.py PROFILE FOLDER RUN_ID [RUN_ID ...] (run from the repository root)."""
import sys
import time
from pathlib import Path

import torch

from study.defaults import load_profile
from study.evaluate import coco_ground_truth, evaluate
from study.runner import Study


def main(profile: str, folder: str, run_ids: list[str], repeats: int = 3) -> None:
    torch.set_num_threads(1)
    study = Study(load_profile(profile), Path(folder), progress=False)
    val, names = study.image_set("val"), study.data().class_names
    gt = coco_ground_truth(val, names)
    for run_id in run_ids:
        model = study.load_finished(run_id)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            metrics = evaluate(model, val, names, torch.device("cpu"), gt)
            times.append(time.perf_counter() - start)
        print(f"{run_id}: {len(val)} images, {', '.join(f'{t:.2f}' for t in times)} s; val mAP {metrics['map']:.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
