"""Check that methods.pt2e_patterns leaves torchao's results as they are, and time both: for the Faster R-CNN
shallow student's backbone and YOLO's yolov8p trunk (the study's int8 parts, randomly initialised, 3 classes), the
post-training int8 graph, and a QAT graph prepared, trained two SGD steps, converted and lowered, once with torchao
as it is and once with the pattern store; the generated code of every graph and every output must be equal.

    python scripts/pt2e_patterns_check.py        # prints one line per stage and family; exits 1 on a difference
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import methods.pt2e_patterns as patterns  # noqa: E402
from detectors.faster_rcnn import build_faster_rcnn  # noqa: E402
from detectors.yolo import build_yolo  # noqa: E402
from methods.quantize_pt2e import (_batches, convert_qat_module, lower_x86, prepare_qat_module,  # noqa: E402
                                   quantizable_part, quantize_module)


def stages(model: torch.nn.Module, images: torch.Tensor) -> tuple[dict, dict, dict]:
    """Code, outputs and seconds of each stage, from the same seed."""
    torch.manual_seed(0)
    name, part = quantizable_part(copy.deepcopy(model))
    example = _batches(model.eval(), images, len(images))[0]
    code, out, seconds = {}, {}, {}

    def timed(stage, fn):
        start = time.perf_counter()
        result = fn()
        seconds[stage] = time.perf_counter() - start
        return result

    ptq = timed("ptq", lambda: quantize_module(part, [example]))
    code["ptq"], out["ptq"] = ptq.code, ptq(example)
    qat = timed("qat prepare", lambda: prepare_qat_module(part, example))
    code["qat prepare"] = qat.code
    optimizer = torch.optim.SGD(qat.parameters(), lr=0.01)
    for _ in range(2):
        loss = sum(o.float().pow(2).mean() for o in torch.utils._pytree.tree_leaves(qat(example)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    converted = timed("qat convert", lambda: convert_qat_module(qat))
    code["qat convert"], out["qat convert"] = converted.code, converted(example)
    lowered = timed("lower", lambda: lower_x86(converted, example))
    code["lower"], out["lower"] = lowered.code, lowered(example)
    return code, out, seconds


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 256, 256)
    models = {"faster_rcnn shallow": build_faster_rcnn("shallow", 3, fpn_channels=64).eval(),
              "yolo yolov8p": build_yolo("yolov8p", 3).eval()}
    failed = False
    for label, model in models.items():
        results = {}
        for active in (False, True):
            patterns.ACTIVE = active
            results[active] = stages(model, images)
        for stage in results[False][0]:
            same_code = results[False][0][stage] == results[True][0][stage]
            same_out = True
            if stage in results[False][1]:
                a = torch.utils._pytree.tree_leaves(results[False][1][stage])
                b = torch.utils._pytree.tree_leaves(results[True][1][stage])
                same_out = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
            failed |= not (same_code and same_out)
            print(f"{label:20s} {stage:12s} code {'same' if same_code else 'DIFFERENT'}, outputs "
                  f"{'same' if same_out else 'DIFFERENT'}; {results[False][2].get(stage, 0):6.1f} s as torchao is, "
                  f"{results[True][2].get(stage, 0):6.1f} s with the pattern store", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
