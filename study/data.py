"""Detection datasets: Pascal VOC, COCO JSON and YOLO txt, read into one plain structure.

A dataset spec on the command line names the format and where it lies:

- ``voc:ROOT``: ``ROOT/Annotations/*.xml``, ``ROOT/ImageSets/Main/<split>.txt``, ``ROOT/JPEGImages/``
  (PMID2019 and BCCD). Class names come from ``ROOT/labels.txt`` if present, else from the annotations.
- ``coco:ANN.json:IMAGES``: one COCO file, split by us; or with ``{split}`` in both paths
  (``coco:ann/instances_{split}.json:images/{split}``), one file per split.
- ``yolo:data.yaml``: ultralytics' layout (``path``, ``train``, ``val``, ``test``, ``names``).

Splits: the dataset's own train/val/test are used. A missing val (or test) split is carved from train with a
fixed seed, so that hyperparameters are never chosen on test.

Bad input raises :class:`DataError`, whose message is one line naming the file and the problem. Boxes that are
zero-area or leave the image are clipped (and dropped when nothing is left) and counted in ``DetectionData.warnings``;
a box with swapped corners (VOC) or a negative width or height (COCO, YOLO) is an error, not a dropped box.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from study.errors import StudyError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


class DataError(StudyError):
    """A problem with the input data; the message is one line naming the file."""


@dataclass
class Sample:
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) float32, xyxy in original pixels
    labels: np.ndarray  # (K,) int64, 1..num_classes (0 is background)


@dataclass
class DetectionData:
    name: str
    class_names: list[str]
    splits: dict[str, list[Sample]]
    warnings: dict[str, list[str]] = field(default_factory=dict)  # kind -> files

    def warning_lines(self) -> list[str]:
        lines = []
        for kind, files in sorted(self.warnings.items()):
            shown = ", ".join(sorted(set(files))[:5]) + (" ..." if len(set(files)) > 5 else "")
            lines.append(f"warning: {len(files)} {kind} ({shown})")
        return lines


class _BoxCleaner:
    """Clips boxes to the image and drops what has no area left, counting both."""

    def __init__(self, warnings: dict[str, list[str]]):
        self.warnings = warnings

    def __call__(self, boxes: list[list[float]], labels: list[int], width: int, height: int, source: str):
        kept_boxes, kept_labels = [], []
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                self.warnings.setdefault("boxes clipped to the image", []).append(source)
            if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
                self.warnings.setdefault("zero-area boxes dropped", []).append(source)
                continue
            kept_boxes.append([cx1, cy1, cx2, cy2])
            kept_labels.append(label)
        return (np.asarray(kept_boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(kept_labels, dtype=np.int64))


def _image_size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # PIL raises several types for broken files
        raise DataError(f"{path}: image cannot be read ({type(exc).__name__})") from None


def _carve(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_out = max(1, round(len(samples) * fraction))
    out = set(order[:n_out])
    return ([s for i, s in enumerate(samples) if i not in out], [s for i, s in enumerate(samples) if i in out])


def _complete_splits(splits: dict[str, list[Sample]], source: str, seed: int, fraction: float) -> dict[str, list[Sample]]:
    if not splits.get("train"):
        raise DataError(f"{source}: no training images (empty or missing train split)")
    carved = [missing for missing in ("val", "test") if missing not in splits]
    n_train = len(splits["train"])
    for missing in carved:
        splits["train"], splits[missing] = _carve(splits["train"], fraction, seed)
    if carved and not splits["train"]:
        raise DataError(f"{source}: {n_train} training images are too few to carve {' and '.join(carved)} from "
                        "(each takes at least one image)")
    for name in SPLITS:
        if not splits[name]:
            raise DataError(f"{source}: split '{name}' is empty")
    check_disjoint(splits, source)
    return {name: splits[name] for name in SPLITS}


def _content_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_disjoint(splits: dict[str, list[Sample]], source: str) -> None:
    """Raise :class:`DataError` naming the two splits and the first shared image when train, val and test share an
    image, by path or by content (the same bytes under another name)."""
    seen: dict[str, tuple[str, Path]] = {}  # path or content hash -> (split, image path)
    for name in SPLITS:
        for sample in splits.get(name, []):
            path = sample.image_path.resolve()
            for key, how in ((str(path), "the same file"), ("sha1:" + _content_hash(path), "the same content")):
                other = seen.get(key)
                if other is not None and other[0] != name:
                    shown = (f"{sample.image_path}" if how == "the same file"
                             else f"{sample.image_path} (same content as {other[1]})")
                    raise DataError(f"{source}: splits '{other[0]}' and '{name}' share an image: {shown}")
                seen.setdefault(key, (name, sample.image_path))


# ---------------------------------------------------------------- VOC
def _read_voc_xml(path: Path) -> tuple[int | None, int | None, list[tuple[str, list[float]]]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from None
    size = root.find("size")
    width = height = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        try:
            width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        except (ValueError, OverflowError):  # not a number, or nan / inf
            raise DataError(f"{path}: <size> has a non-numeric width or height") from None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        if not name or bnd is None:
            raise DataError(f"{path}: an <object> lacks <name> or <bndbox>")
        try:
            coords = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DataError(f"{path}: a <bndbox> has a missing or non-numeric coordinate") from None
        if not all(math.isfinite(v) for v in coords):
            raise DataError(f"{path}: the <bndbox> of a '{name}' has a non-finite coordinate (nan or inf)")
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise DataError(f"{path}: the <bndbox> of a '{name}' has xmax < xmin or ymax < ymin "
                            f"({', '.join(f'{v:g}' for v in coords)}): corners swapped?")
        objects.append((name, coords))
    return width, height, objects


def load_voc(root: Path, seed: int = 0, carve_fraction: float = 0.15) -> DetectionData:
    root = Path(root)
    sets = root / "ImageSets" / "Main"
    if not sets.is_dir():
        raise DataError(f"{sets}: VOC split folder is missing")
    split_ids = {}
    for name in ("train", "val", "test", "trainval"):
        path = sets / f"{name}.txt"
        if path.is_file():
            ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            if not ids:
                raise DataError(f"{path}: split file is empty")
            split_ids[name] = ids
    trainval = split_ids.pop("trainval", None)
    if "train" not in split_ids and trainval is not None:  # train = trainval less what val and test hold
        held_out = set(split_ids.get("val", [])) | set(split_ids.get("test", []))
        split_ids["train"] = [i for i in trainval if i not in held_out]
        if not split_ids["train"]:
            raise DataError(f"{sets / 'trainval.txt'}: every image is also in val.txt or test.txt; nothing to train on")
    if "train" not in split_ids:
        raise DataError(f"{sets}: no train.txt or trainval.txt")

    parsed = {}
    for ids in split_ids.values():
        for image_id in ids:
            if image_id not in parsed:
                xml_path = root / "Annotations" / f"{image_id}.xml"
                if not xml_path.is_file():
                    raise DataError(f"{xml_path}: annotation file is missing")
                parsed[image_id] = _read_voc_xml(xml_path)

    labels_file = root / "labels.txt"
    if labels_file.is_file():
        class_names = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    else:
        class_names = sorted({name for _, _, objects in parsed.values() for name, _ in objects})
    index = {name: i + 1 for i, name in enumerate(class_names)}

    warnings: dict[str, list[str]] = {}
    clean = _BoxCleaner(warnings)
    splits = {}
    for split, ids in split_ids.items():
        samples = []
        for image_id in ids:
            width, height, objects = parsed[image_id]
            xml_name = f"{image_id}.xml"
            image_path = next((root / "JPEGImages" / f"{image_id}{suf}" for suf in IMAGE_SUFFIXES
                               if (root / "JPEGImages" / f"{image_id}{suf}").is_file()),
                              root / "JPEGImages" / f"{image_id}.jpg")
            real_w, real_h = _image_size(image_path)
            if (width, height) != (real_w, real_h) and width is not None:
                warnings.setdefault("XML sizes differing from the image (image size used)", []).append(xml_name)
            for name, _ in objects:
                if name not in index:
                    raise DataError(f"{root / 'Annotations' / xml_name}: unknown class '{name}' (not in {labels_file})")
            boxes, labels = clean([c for _, c in objects], [index[n] for n, _ in objects], real_w, real_h, xml_name)
            samples.append(Sample(image_path, real_w, real_h, boxes, labels))
        splits[split] = samples
    return DetectionData(root.name, class_names, _complete_splits(splits, str(sets), seed, carve_fraction), warnings)


# ---------------------------------------------------------------- COCO
def _read_coco_file(ann_path: Path, image_dir: Path, clean: _BoxCleaner, class_names: list[str] | None):
    if not ann_path.is_file():
        raise DataError(f"{ann_path}: COCO annotation file is missing")
    try:
        doc = json.loads(ann_path.read_text())
        images, annotations, categories = doc["images"], doc.get("annotations", []), doc["categories"]
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    except (KeyError, TypeError) as exc:
        raise DataError(f"{ann_path}: not a COCO detection file (missing {exc})") from None
    for kind, entries, keys in (("category", categories, ("id", "name")), ("image", images, ("id", "file_name"))):
        for n, entry in enumerate(entries):
            lacking = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if lacking:
                raise DataError(f"{ann_path}: {kind} entry {n} has no '{lacking[0]}'")
    cats = sorted(categories, key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    if class_names is not None and names != class_names:
        raise DataError(f"{ann_path}: categories differ from the other splits' ({names} vs {class_names})")
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    per_image = defaultdict(list)
    for ann in annotations:
        if ann.get("iscrowd", 0):
            continue
        if ann.get("category_id") not in label_of:
            raise DataError(f"{ann_path}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise DataError(f"{ann_path}: annotation {ann.get('id')} has no bbox [x, y, width, height] (got {box!r})")
        if not all(math.isfinite(v) for v in box):
            raise DataError(f"{ann_path}: annotation {ann.get('id')} has a non-finite bbox value (bbox {box})")
        if box[2] < 0 or box[3] < 0:
            raise DataError(f"{ann_path}: annotation {ann.get('id')} has a negative width or height (bbox {box})")
        per_image[ann.get("image_id")].append(ann)
    orphans = set(per_image) - {img["id"] for img in images}
    if orphans:
        image_id = sorted(orphans, key=str)[0]
        raise DataError(f"{ann_path}: annotation {per_image[image_id][0].get('id')} refers to image_id {image_id!r}, "
                        "which no image has")
    samples = []
    for img in images:
        path = image_dir / img["file_name"]
        width, height = _image_size(path)
        anns = per_image.get(img["id"], [])
        xyxy = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        boxes, labels = clean(xyxy, [label_of[a["category_id"]] for a in anns], width, height, img["file_name"])
        samples.append(Sample(path, width, height, boxes, labels))
    return names, samples


def load_coco(ann: str, images: str, seed: int = 0, carve_fraction: float = 0.15) -> DetectionData:
    warnings: dict[str, list[str]] = {}
    clean = _BoxCleaner(warnings)
    splits, class_names = {}, None
    if "{split}" in ann:
        for split in SPLITS:
            ann_path = Path(ann.replace("{split}", split))
            if split != "train" and not ann_path.is_file():
                continue
            class_names, splits[split] = _read_coco_file(ann_path, Path(images.replace("{split}", split)), clean,
                                                         class_names)
    else:
        class_names, samples = _read_coco_file(Path(ann), Path(images), clean, None)
        rest, splits["test"] = _carve(samples, carve_fraction, seed)
        splits["train"] = rest
    return DetectionData(Path(ann).stem, class_names, _complete_splits(splits, ann, seed, carve_fraction), warnings)


# ---------------------------------------------------------------- YOLO
def _yolo_image_list(base: Path, entry, yaml_path: Path) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    paths = []
    for item in entries:
        p = (base / item) if not Path(item).is_absolute() else Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            paths += [(base / line.strip()) for line in p.read_text().splitlines() if line.strip()]
        else:
            raise DataError(f"{yaml_path}: split entry '{item}' is neither an image folder nor a list file")
    return paths


def _yolo_label_path(image_path: Path) -> Path:
    parts = list(image_path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_row(values: list[str], label_path: Path, n: int) -> tuple[int, float, float, float, float]:
    """One label line as (class, cx, cy, w, h): a box ``class cx cy w h``, or a polygon ``class x1 y1 x2 y2 x3 y3
    ...`` (ultralytics' segment labels) as the box around its points, as ultralytics reads them for detection."""
    try:
        cls, coords = int(values[0]), [float(v) for v in values[1:]]
    except (ValueError, IndexError):
        coords = None
    if coords is None or not (len(coords) == 4 or (len(coords) >= 6 and len(coords) % 2 == 0)):
        raise DataError(f"{label_path}: line {n} is not 'class cx cy w h' (nor a polygon 'class x1 y1 x2 y2 x3 y3 ...')")
    if len(coords) == 4:
        if coords[2] < 0 or coords[3] < 0:
            raise DataError(f"{label_path}: line {n} has a negative width or height")
        return (cls, *coords)
    xs, ys = coords[0::2], coords[1::2]
    return cls, (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)


def load_yolo(yaml_path: Path, seed: int = 0, carve_fraction: float = 0.15) -> DetectionData:
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise DataError(f"{yaml_path}: data.yaml is missing")
    try:
        doc = yaml.safe_load(yaml_path.read_text())
        names = doc["names"]
    except yaml.YAMLError as exc:
        raise DataError(f"{yaml_path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    except (KeyError, TypeError):
        raise DataError(f"{yaml_path}: no 'names' list") from None
    if not isinstance(names, (dict, list)) or not names:
        raise DataError(f"{yaml_path}: 'names' must be a list or a mapping of class names, not {names!r}")
    class_names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    base = Path(doc.get("path") or yaml_path.parent)
    if not base.is_absolute():
        base = yaml_path.parent / base
    warnings: dict[str, list[str]] = {}
    clean = _BoxCleaner(warnings)
    splits = {}
    for split in SPLITS:
        if not doc.get(split):
            continue
        samples = []
        for image_path in _yolo_image_list(base, doc[split], yaml_path):
            width, height = _image_size(image_path)
            label_path = _yolo_label_path(image_path)
            rows = []
            if label_path.is_file():
                for n, line in enumerate(label_path.read_text().splitlines(), 1):
                    if not line.strip():
                        continue
                    cls, cx, cy, w, h = _yolo_row(line.split(), label_path, n)
                    if not 0 <= cls < len(class_names):
                        raise DataError(f"{label_path}: line {n} has unknown class index {cls}")
                    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
                        raise DataError(f"{label_path}: line {n} has a non-finite coordinate (nan or inf)")
                    rows.append((cls, cx, cy, w, h))
            xyxy = [[(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                    for _, cx, cy, w, h in rows]
            boxes, labels = clean(xyxy, [r[0] + 1 for r in rows], width, height, label_path.name)
            samples.append(Sample(image_path, width, height, boxes, labels))
        splits[split] = samples
    return DetectionData(yaml_path.parent.name, class_names, _complete_splits(splits, str(yaml_path), seed,
                                                                               carve_fraction), warnings)


def load_dataset(spec: str, seed: int = 0) -> DetectionData:
    """Read a dataset from its spec (``voc:ROOT``, ``coco:ANN.json:IMAGES``, ``yolo:data.yaml``)."""
    kind, _, rest = spec.partition(":")
    if kind == "voc" and rest:
        return load_voc(Path(rest), seed)
    if kind == "coco" and rest.count(":") >= 1:
        ann, _, images = rest.rpartition(":")
        return load_coco(ann, images, seed)
    if kind == "yolo" and rest:
        return load_yolo(Path(rest), seed)
    raise DataError(f"{spec}: unknown dataset spec (use voc:ROOT, coco:ANN.json:IMAGES or yolo:data.yaml)")
