"""A study's workspace: what its runs read and leave on disk and in memory, apart from deciding what runs.

- the data set (loaded once) and its decoded image sets per split;
- the results folder: ``runs.csv``, each run's folder ``runs/<run id>/`` with its spec file (``spec.json``), its
  checkpoints and the finished-run loading (:meth:`Workspace.load_finished`), the test detections file;
- the teacher cache of the distilled runs (one teacher's at a time);
- the test split's COCO ground truth.

:class:`study.runner.Study` holds one and delegates to it; the run kinds (:mod:`study.run_kinds`) and the latency
pass (:mod:`study.latency_pass`) read and write through it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from detectors.faster_rcnn import build_faster_rcnn
from detectors.fcos import build_fcos
from detectors.yolo import build_yolo, configure_ultralytics
from methods.distill.distiller import TeacherCache
from study.data import DetectionData, load_dataset
from study.errors import StudyError
from study.evaluate import coco_ground_truth
from study.images import ImageSet, canvas_size, load_images
from study.plan import SHAPE_KEYS, RunSpec, plan_runs
from study.store import read_runs


def build_model(spec: RunSpec, num_classes: int) -> torch.nn.Module:
    """A randomly initialised model for ``spec``'s detector and role."""
    role, shape = spec.hparams["role"], spec.hparams[SHAPE_KEYS[spec.detector]]
    if spec.detector == "yolo":
        return build_yolo(role["model"], num_classes, **shape)
    if spec.detector == "fcos":
        return build_fcos(role["backbone"], num_classes, fpn_channels=role["fpn_channels"], **shape)
    return build_faster_rcnn(role["backbone"], num_classes, fpn_channels=role["fpn_channels"],
                             roi_dim=role["roi_dim"], **{k: (tuple(v) if isinstance(v, list) else v)
                                                         for k, v in shape.items()})


def _check_creatable(folder: Path) -> None:
    """Raise a one-line :class:`StudyError` when ``folder`` is a file or could not be made (it is created later,
    where it is written)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if existing == folder.absolute() and not existing.is_dir():
        raise StudyError(f"{folder}: the study's output folder is a file")
    if not existing.is_dir():
        raise StudyError(f"{folder}: cannot create the study's output folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StudyError(f"{folder}: cannot create or write the study's output folder (no permission on {existing})")


class Workspace:
    """The data, image sets, run folders and caches of one study in ``out_dir``; ``log`` gets the data's warnings."""

    def __init__(self, profile: dict, out_dir: Path, data_spec: str, device: torch.device, log=print):
        self.profile = profile
        self.out_dir = Path(out_dir)
        _check_creatable(self.out_dir)
        configure_ultralytics(self.out_dir / ".ultralytics")  # its settings file stays in the results folder
        self.runs_csv = self.out_dir / "runs.csv"
        self.data_spec = data_spec
        self.device = device
        self.log = log
        self._data: DetectionData | None = None
        self._sets: dict[str, ImageSet] = {}
        self._teacher_caches: dict[str, TeacherCache] = {}

    # -------------------------------------------------------------- data, loaded once per study
    def data(self) -> DetectionData:
        if self._data is None:
            self._data = load_dataset(self.data_spec, seed=self.profile["split_seed"])
            for line in self._data.warning_lines():
                self.log(line)
        return self._data

    def image_set(self, split: str) -> ImageSet:
        if split not in self._sets:
            data = self.data()
            limit = self.profile["max_train_images" if split == "train" else "max_eval_images"]
            samples = data.splits[split][:limit] if limit else data.splits[split]
            canvas = canvas_size([s for v in data.splits.values() for s in v], self.profile["image_size"])
            self._sets[split] = load_images(samples, canvas, self.profile["image_size"])
        return self._sets[split]

    def test_ground_truth(self):
        """The test split's COCO ground truth, as every run was scored against (the bootstrap's reference)."""
        return coco_ground_truth(self.image_set("test"), self.data().class_names)

    # -------------------------------------------------------------- run folders
    def run_dir(self, run_id: str) -> Path:
        return self.out_dir / "runs" / run_id

    def spec_file(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "spec.json"

    def keep_spec(self, spec: RunSpec) -> None:
        """Keep the run's spec beside its files, so the latency pass can rebuild its model as evaluated."""
        self.spec_file(spec.run_id).write_text(json.dumps(dataclasses.asdict(spec)))

    def kept_spec(self, run_id: str) -> RunSpec | None:
        """The spec :meth:`keep_spec` kept for ``run_id``; None where it kept none."""
        path = self.spec_file(run_id)
        return RunSpec(**json.loads(path.read_text())) if path.is_file() else None

    def detections_file(self, spec: RunSpec) -> Path:
        """Where a run's test detections are kept (committed with the results: the bootstrap over test images)."""
        return self.out_dir / "detections" / f"{spec.run_id}.json.gz"

    # -------------------------------------------------------------- models
    def build(self, spec: RunSpec) -> torch.nn.Module:
        return build_model(spec, len(self.data().class_names))

    def load_finished(self, run_id: str) -> torch.nn.Module:
        """A fresh copy of a finished run's model, from its best checkpoint."""
        row = {r["run_id"]: r for r in read_runs(self.runs_csv)}.get(run_id)
        if row is None or row["status"] != "ok":
            raise RuntimeError(f"run {run_id} is not available ({row['error'] if row else 'it has not run'})")
        spec = self.kept_spec(run_id) or next(  # the spec it ran with (a tuned study's plan needs its searches)
            s for s in plan_runs(self.profile, self.data().name) if s.run_id == run_id)
        model = self.build(spec)
        model.load_state_dict(torch.load(self.run_dir(run_id) / "best.pt", map_location="cpu"))
        return model

    def teacher_cache(self, teacher_run: str) -> TeacherCache:
        if teacher_run not in self._teacher_caches:
            teacher = self.load_finished(teacher_run).to(self.device)
            self._teacher_caches = {teacher_run: TeacherCache(teacher, self.profile["teacher_cache_mb"])}
        return self._teacher_caches[teacher_run]
