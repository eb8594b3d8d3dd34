"""Check (2026-12-07): does timing a model among many other ONNX Runtime sessions change its int8/fp32 ratio?

The frontier's latency pass timed all 241 models in one set of interleaved rounds and measured YOLO's small
students' int8 at 1.28-1.29x their fp32; pilots that timed three models together measured 0.98-1.09x
(docs/quantization-notes.md). Here a trained yolov8p (FOLDER's run RUN_ID, e.g. the SiLU pilot's source) as fp32
and as post-training int8 (the study's `int8` settings), whole detectors with NMS as the study times them, in the
study's interleaved rounds (2 threads, batch 1, 20 rounds of 4 test images): alone as a pair, and among fillers,
untrained yolov8s and yolov8n networks in fp32 and int8 (each file loaded in COPIES sessions, so 4 x COPIES other
sessions, each with its own weights and memory), three blocks each, alternating.

Run from the repository root: ``python results/frontier/pilots/latency_many_sessions.py FOLDER RUN_ID COPIES``;
writes ``pilots/latency_many_sessions.json``.
"""
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

from methods.quantize_pt2e import load_int8, quantize_int8_pt2e, save_int8
from study.cost import interleaved_latency
from study.defaults import DEFAULTS, load_profile
from study.onnx_runtime import ort_detector, session
from study.workspace import Workspace

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("ort_profile", Path("scripts/ort_profile.py"))
ort_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ort_profile)


class Network:
    """An exported network in its own ONNX Runtime session, called like a detector (outputs discarded)."""

    def __init__(self, path: Path, threads: int):
        self.session = session(path, threads)
        self.name = self.session.get_inputs()[0].name

    def eval(self):
        return self

    def to(self, device):
        return self

    def __call__(self, images):
        for image in images:
            self.session.run(None, {self.name: image.float().numpy()})


def main(folder: str, run: str, copies: int) -> None:
    cfg, cost = DEFAULTS["compression"]["int8"], DEFAULTS["cost"]
    ws = Workspace(load_profile(str(HERE / "yolo-silu-sources.yaml")), Path(folder), "voc:data/bccd",
                   torch.device("cpu"))
    calibration = ws.image_set("train").images[:cfg["calibration_images"]].float().div(255)
    test = ws.image_set("test").images
    images = [test[i].float().div(255) for i in range(cost["images"])]
    torch.set_num_threads(1)
    model = ws.load_finished(run).eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pair = {"fp32": ort_detector(model, images[0], out / "fp32.onnx", threads=cost["threads"])}
        qmodel, _ = quantize_int8_pt2e(model, calibration, reduce_range=cfg["reduce_range"], heads=cfg["heads"],
                                       residual_inputs=cfg["residual_inputs"])
        (out / "int8").mkdir()
        save_int8(qmodel, out / "int8", calibration)
        loaded = load_int8(ws.build(ws.kept_spec(run)), out / "int8").eval()
        pair["int8"] = ort_detector(loaded, images[0], out / "int8.onnx", threads=cost["threads"])
        files = [p for name in ("yolov8s", "yolov8n") for p in ort_profile.untrained_yolo(ws, name, out)]
        fillers = {f"{p.stem}#{i}": Network(p, cost["threads"]) for p in files for i in range(copies)}
        result = {"run": run, "other_sessions": len(fillers), "cost": cost, "alone": [], "among_others": []}
        for block in range(3):
            for setting, models in (("alone", pair), ("among_others", pair | fillers)):
                timed = interleaved_latency(models, images, cost, seed=block)
                result[setting].append({k: round(timed[k]["cpu_ms"], 3) for k in pair}
                                       | {"ratio": round(timed["int8"]["cpu_ms"] / timed["fp32"]["cpu_ms"], 3)})
                print(setting, result[setting][-1], flush=True)
    (HERE / "latency_many_sessions.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
