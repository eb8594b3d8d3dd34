"""Pilot (2026-12-06, results/frontier/DEVIATIONS.md 2): int8 scopes on a trained frontier model: size, val mAP
(PyTorch converted; ONNX Runtime), latency (ONNX Runtime and PyTorch lowered, interleaved, 1 thread, contended).
Run from the repository root with the frontier's folder at /work/frontier-run:
``python results/frontier/pilots/int8_scope.py RUN_ID``; writes /work/scratch/var/RUN_ID/result.json."""
import sys, time, json, torch, tempfile
from pathlib import Path
torch.set_num_threads(1)
from study.defaults import load_profile
from study.workspace import Workspace
from study.onnx_runtime import ort_detector
from methods.quantize_pt2e import quantize_int8_pt2e, save_int8, load_int8, lowered
from study.cost import interleaved_latency
from study.evaluate import evaluate
run = sys.argv[1]
out = Path("/work/scratch/var") / run; out.mkdir(parents=True, exist_ok=True)
ws = Workspace(load_profile("frontier"), Path("/work/frontier-run"), "voc:data/bccd", torch.device("cpu"))
model = ws.load_finished(run).eval()
train = ws.image_set("train").images
calib = torch.stack([train[i].float().div(255) for i in range(32)])
test = ws.image_set("test").images
imgs = [test[i].float().div(255) for i in range(4)]
vs, classes = ws.image_set("val"), ws.data().class_names
torch.save(model.state_dict(), out / "fp32.pt")
res = {"fp32": {"mb": (out / "fp32.pt").stat().st_size / 1e6, "val": evaluate(model, vs, classes, torch.device("cpu"))["map"]}}
ort = {"fp32": ort_detector(model, imgs[0], out / "fp32.onnx")}
eager = {"fp32": model}
for name, kw in [("bb", {}), ("heads", {"heads": True}), ("heads+res", {"heads": True, "residual_inputs": True})]:
    t = time.time()
    q, _ = quantize_int8_pt2e(model, calib, **kw)
    d = out / name; d.mkdir(exist_ok=True)
    files = save_int8(q, d, calib)
    q = load_int8(ws.build(ws.kept_spec(run)), d)
    res[name] = {"mb": sum(f.stat().st_size for f in files) / 1e6, "val": evaluate(q, vs, classes, torch.device("cpu"))["map"]}
    ort[name] = ort_detector(q, imgs[0], d / "m.onnx")
    eager[name] = lowered(q, imgs[0])
    print(name, res[name], time.time() - t, flush=True)
res["ort_val_heads+res"] = evaluate(ort["heads+res"], vs, classes, torch.device("cpu"))["map"]
cfg = {"threads": 1, "warmup": 2, "rounds": 6}
lat = interleaved_latency({**{("ort", k): v for k, v in ort.items()}, **{("pt", k): v for k, v in eager.items()}}, imgs, cfg)
res["latency"] = {f"{a}/{b}": round(v["cpu_ms"], 2) for (a, b), v in lat.items()}
print(json.dumps(res, indent=1), flush=True)
(out / "result.json").write_text(json.dumps(res, indent=1))
