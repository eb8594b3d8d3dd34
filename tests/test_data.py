"""Loaders for VOC, COCO and YOLO, the bad-input cases, and the in-memory image canvas."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import BCCD, make_voc, voc_xml

from study.data import DataError, load_dataset
from study.images import canvas_size, flip_batch, load_images


def test_bundled_bccd_loads_with_its_splits_and_counts_its_two_zero_area_boxes():
    data = load_dataset(f"voc:{BCCD}")
    assert data.class_names == ["Platelets", "RBC", "WBC"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 205, "val": 87, "test": 72}
    dropped = data.warnings["zero-area boxes dropped"]
    assert sorted(dropped) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert "2 zero-area boxes dropped" in " ".join(data.warning_lines())
    boxes = np.concatenate([s.boxes for s in data.splits["test"]])
    assert len(boxes) == 945  # the test split's box count (see data/bccd/SOURCE.md)
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()


def test_voc_missing_val_split_is_carved_from_train_deterministically(tmp_path, ids):
    root = make_voc(tmp_path / "v", {"train": ids[:8], "test": ids[8:]})
    a, b = load_dataset(f"voc:{root}"), load_dataset(f"voc:{root}")
    assert len(a.splits["val"]) >= 1 and len(a.splits["train"]) + len(a.splits["val"]) == 8
    assert [s.image_path for s in a.splits["val"]] == [s.image_path for s in b.splits["val"]]
    assert not {s.image_path for s in a.splits["val"]} & {s.image_path for s in a.splits["train"]}


def test_too_few_training_images_to_carve_the_missing_splits_is_said_so(tmp_path, ids):
    root = make_voc(tmp_path / "v", {"train": ids[:2]})  # val and test carved: one image each, none left to train
    with pytest.raises(DataError, match="2 training images are too few to carve val and test from"):
        load_dataset(f"voc:{root}")


def test_splits_sharing_an_image_by_path_are_an_error_naming_both_splits_and_the_file(tmp_path, ids):
    root = make_voc(tmp_path / "v", {"train": ids[:5], "val": ids[4:7], "test": ids[7:]})
    with pytest.raises(DataError, match=f"splits 'train' and 'val' share an image: .*{ids[4]}.jpg$"):
        load_dataset(f"voc:{root}")


def test_splits_sharing_an_image_by_content_are_an_error(tmp_path, ids):
    root = make_voc(tmp_path / "v", {"train": ids[:5], "val": ids[5:7], "test": ids[7:]})
    # the same bytes under a new name in test: caught by the content hash, not the path
    (root / "JPEGImages" / f"{ids[8]}.jpg").write_bytes((root / "JPEGImages" / f"{ids[1]}.jpg").read_bytes())
    with pytest.raises(DataError, match=f"splits 'train' and 'test' share an image: .*{ids[8]}.jpg "
                                        f"\\(same content as .*{ids[1]}.jpg\\)"):
        load_dataset(f"voc:{root}")


def test_voc_trainval_without_train_trains_on_trainval_less_val_and_test(tmp_path, ids):
    root = make_voc(tmp_path / "v", {"trainval": ids[:7], "val": ids[5:7], "test": ids[7:]})
    data = load_dataset(f"voc:{root}")
    assert [s.image_path.stem for s in data.splits["train"]] == ids[:5]
    assert [s.image_path.stem for s in data.splits["val"]] == ids[5:7]


def test_voc_missing_image_names_the_file(tiny_voc, ids):
    (tiny_voc / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    with pytest.raises(DataError, match=f"{ids[0]}.jpg: image file is missing"):
        load_dataset(f"voc:{tiny_voc}")


def test_voc_malformed_xml_names_the_file(tiny_voc, ids):
    (tiny_voc / "Annotations" / f"{ids[1]}.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=f"{ids[1]}.xml: malformed XML"):
        load_dataset(f"voc:{tiny_voc}")
    (tiny_voc / "Annotations" / f"{ids[1]}.xml").write_text(
        "<annotation><size><width>640px</width><height>480</height></size></annotation>")
    with pytest.raises(DataError, match=f"{ids[1]}.xml: <size> has a non-numeric width or height"):
        load_dataset(f"voc:{tiny_voc}")


def test_voc_box_with_swapped_corners_is_an_error_not_a_dropped_box(tiny_voc, ids):
    (tiny_voc / "Annotations" / f"{ids[1]}.xml").write_text(voc_xml([("RBC", (100, 100, 50, 150))]))
    with pytest.raises(DataError, match=rf"{ids[1]}.xml: the <bndbox> of a 'RBC' has xmax < xmin or ymax < ymin "
                                        r"\(100, 100, 50, 150\): corners swapped\?"):
        load_dataset(f"voc:{tiny_voc}")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_voc_non_finite_coordinate_or_size_is_an_error(tiny_voc, ids, value):
    xml = tiny_voc / "Annotations" / f"{ids[1]}.xml"
    xml.write_text(voc_xml([("RBC", (10, 10, 50, 50))]).replace("<xmax>50</xmax>", f"<xmax>{value}</xmax>", 1))
    with pytest.raises(DataError) as err:
        load_dataset(f"voc:{tiny_voc}")
    assert str(err.value) == f"{xml}: the <bndbox> of a 'RBC' has a non-finite coordinate (nan or inf)"
    xml.write_text(voc_xml([("RBC", (10, 10, 50, 50))], width=value))
    with pytest.raises(DataError, match=f"{ids[1]}.xml: <size> has a non-numeric width or height"):
        load_dataset(f"voc:{tiny_voc}")


def test_voc_unknown_class_against_labels_file(tiny_voc, ids):
    (tiny_voc / "labels.txt").write_text("RBC\nWBC\nPlatelets\n")
    (tiny_voc / "Annotations" / f"{ids[2]}.xml").write_text(voc_xml([("Diatom", (1, 1, 50, 50))]))
    with pytest.raises(DataError, match=f"{ids[2]}.xml: unknown class 'Diatom'"):
        load_dataset(f"voc:{tiny_voc}")


def test_voc_out_of_image_box_is_clipped_and_zero_area_dropped_with_counts(tiny_voc, ids):
    (tiny_voc / "Annotations" / f"{ids[0]}.xml").write_text(
        voc_xml([("RBC", (600, 400, 700, 520)), ("RBC", (10, 10, 10, 10)), ("WBC", (-5, 5, 30, 40))]))
    data = load_dataset(f"voc:{tiny_voc}")
    sample = data.splits["train"][0]
    np.testing.assert_allclose(sample.boxes, [[600, 400, 640, 480], [0, 5, 30, 40]])
    assert data.warnings["boxes clipped to the image"] == [f"{ids[0]}.xml"] * 2
    assert data.warnings["zero-area boxes dropped"] == [f"{ids[0]}.xml"]


def test_voc_unreadable_image_names_the_file(tiny_voc, ids):
    (tiny_voc / "JPEGImages" / f"{ids[3]}.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=f"{ids[3]}.jpg: image cannot be read"):
        load_dataset(f"voc:{tiny_voc}")


def test_voc_empty_split_file_is_an_error(tiny_voc):
    (tiny_voc / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(DataError, match="test.txt: split file is empty"):
        load_dataset(f"voc:{tiny_voc}")


def test_unknown_spec_is_an_error():
    with pytest.raises(DataError, match="unknown dataset spec"):
        load_dataset("pascal:/nowhere")


def _coco_from_voc(voc_root, split_ids, path):
    data = load_dataset(f"voc:{voc_root}")
    samples = [s for v in data.splits.values() for s in v if s.image_path.stem in split_ids]
    images, anns = [], []
    for i, s in enumerate(samples):
        images.append({"id": i + 10, "file_name": s.image_path.name, "width": s.width, "height": s.height})
        for b, l in zip(s.boxes.tolist(), s.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 10, "category_id": int(l) * 7,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "iscrowd": 0, "area": 1})
    cats = [{"id": (k + 1) * 7, "name": n} for k, n in enumerate(data.class_names)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return data, samples


def test_coco_single_file_is_split_and_matches_voc_boxes(tiny_voc, ids, tmp_path):
    voc, samples = _coco_from_voc(tiny_voc, ids, tmp_path / "ann.json")
    data = load_dataset(f"coco:{tmp_path / 'ann.json'}:{tiny_voc / 'JPEGImages'}")
    assert data.class_names == voc.class_names
    assert sum(len(v) for v in data.splits.values()) == len(ids)
    by_name = {s.image_path.name: s for v in data.splits.values() for s in v}
    for s in samples:
        np.testing.assert_allclose(by_name[s.image_path.name].boxes, s.boxes, atol=1e-4)
        np.testing.assert_array_equal(by_name[s.image_path.name].labels, s.labels)


def test_coco_per_split_files(tiny_voc, ids, tmp_path):
    for split, part in (("train", ids[:5]), ("val", ids[5:7]), ("test", ids[7:])):
        _coco_from_voc(tiny_voc, part, tmp_path / f"inst_{split}.json")
    data = load_dataset(f"coco:{tmp_path / 'inst_{split}.json'}:{tiny_voc / 'JPEGImages'}")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "val": 2, "test": 2}


def test_coco_malformed_json_and_unknown_category(tiny_voc, ids, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="bad.json: malformed JSON"):
        load_dataset(f"coco:{bad}:{tiny_voc / 'JPEGImages'}")
    _coco_from_voc(tiny_voc, ids, tmp_path / "ann.json")
    doc = json.loads((tmp_path / "ann.json").read_text())
    doc["annotations"][0]["category_id"] = 999
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="ann.json: annotation 1 has unknown category_id 999"):
        load_dataset(f"coco:{tmp_path / 'ann.json'}:{tiny_voc / 'JPEGImages'}")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].pop("bbox"), "annotation 1 has no bbox [x, y, width, height] (got None)"),
    (lambda d: d["annotations"][0].update(bbox="1,2,3,4"), "annotation 1 has no bbox [x, y, width, height] (got '1,2,3,4')"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation 1 has no bbox [x, y, width, height] (got [1, 2, 3])"),
    (lambda d: d["annotations"][0].update(image_id=4242), "annotation 1 refers to image_id 4242, which no image has"),
    (lambda d: d["images"][1].pop("file_name"), "image entry 1 has no 'file_name'"),
    (lambda d: d["annotations"][0].update(bbox=[10, 20, -5, 8]),
     "annotation 1 has a negative width or height (bbox [10, 20, -5, 8])"),
    (lambda d: d["annotations"][0].update(bbox=[10, 20, float("nan"), 8]),
     "annotation 1 has a non-finite bbox value (bbox [10, 20, nan, 8])"),
    (lambda d: d["categories"][0].pop("name"), "category entry 0 has no 'name'")])
def test_coco_entry_that_cannot_be_read_is_named_in_one_line(tiny_voc, ids, tmp_path, change, message):
    _coco_from_voc(tiny_voc, ids, tmp_path / "ann.json")
    doc = json.loads((tmp_path / "ann.json").read_text())
    change(doc)
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        load_dataset(f"coco:{tmp_path / 'ann.json'}:{tiny_voc / 'JPEGImages'}")
    assert str(err.value) == f"{tmp_path / 'ann.json'}: {message}"


def _yolo_from_voc(voc_root, ids, root):
    data = load_dataset(f"voc:{voc_root}")
    samples = {s.image_path.stem: s for v in data.splits.values() for s in v}
    for split, part in (("train", ids[:5]), ("val", ids[5:7]), ("test", ids[7:])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in part:
            s = samples[i]
            (root / "images" / split / s.image_path.name).write_bytes(s.image_path.read_bytes())
            lines = [f"{l - 1} {(b[0] + b[2]) / 2 / s.width} {(b[1] + b[3]) / 2 / s.height} "
                     f"{(b[2] - b[0]) / s.width} {(b[3] - b[1]) / s.height}" for b, l in zip(s.boxes, s.labels)]
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "test": "images/test", "names": data.class_names}))
    return samples


def test_yolo_loads_and_matches_voc_boxes(tiny_voc, ids, tmp_path):
    samples = _yolo_from_voc(tiny_voc, ids, tmp_path / "y")
    data = load_dataset(f"yolo:{tmp_path / 'y' / 'data.yaml'}")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "val": 2, "test": 2}
    for s in data.splits["train"]:
        np.testing.assert_allclose(s.boxes, samples[s.image_path.stem].boxes, atol=1e-3)


YOLO_BAD_LABELS = [  # (the label file's text, what the error says about it)
    ("0 0.5 0.5 0.1\n", "line 1 is not 'class cx cy w h'"),
    ("7 0.5 0.5 0.1 0.1\n", "line 1 has unknown class index 7"),
    ("0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n", "line 2 has a non-finite coordinate"),
    ("0 0.5 0.5 -0.2 0.2\n", "line 1 has a negative width or height"),
    ("0 0.5 0.5 0.2 0.2 0.9\n", "line 1 is not 'class cx cy w h'"),  # six values: neither a box nor a polygon
]


def test_yolo_bad_line_and_unknown_class_index(tiny_voc, ids, tmp_path):
    _yolo_from_voc(tiny_voc, ids, tmp_path / "y")
    label = tmp_path / "y" / "labels" / "train" / f"{ids[0]}.txt"
    for text, problem in YOLO_BAD_LABELS:
        label.write_text(text)
        with pytest.raises(DataError, match=f"{ids[0]}.txt: {problem}"):
            load_dataset(f"yolo:{tmp_path / 'y' / 'data.yaml'}")
    (tmp_path / "y" / "data.yaml").write_text("path: .\ntrain: images/train\nnames: 3\n")
    with pytest.raises(DataError, match="data.yaml: 'names' must be a list or a mapping of class names, not 3"):
        load_dataset(f"yolo:{tmp_path / 'y' / 'data.yaml'}")


def test_yolo_polygon_label_is_read_as_the_box_around_its_points(tiny_voc, ids, tmp_path):
    samples = _yolo_from_voc(tiny_voc, ids, tmp_path / "y")
    label = tmp_path / "y" / "labels" / "train" / f"{ids[0]}.txt"
    # a triangle with x in [0.2, 0.6] and y in [0.1, 0.5]: the box (0.4, 0.3, 0.4, 0.4), beside a plain box line
    label.write_text("1 0.2 0.5 0.6 0.5 0.4 0.1\n0 0.5 0.5 0.2 0.2\n")
    data = load_dataset(f"yolo:{tmp_path / 'y' / 'data.yaml'}")
    [s] = [s for s in data.splits["train"] if s.image_path.stem == ids[0]]
    w, h = samples[ids[0]].width, samples[ids[0]].height
    np.testing.assert_allclose(s.boxes, [[0.2 * w, 0.1 * h, 0.6 * w, 0.5 * h], [0.4 * w, 0.4 * h, 0.6 * w, 0.6 * h]],
                               atol=1e-3)
    assert s.labels.tolist() == [2, 1]


def test_cli_reports_bad_data_in_one_line(tiny_voc, ids, tmp_path):
    (tiny_voc / "Annotations" / f"{ids[1]}.xml").write_text("<annotation>")
    proc = subprocess.run([sys.executable, "-m", "study", "run", "--profile", "smoke", "--data", f"voc:{tiny_voc}",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and f"{ids[1]}.xml: malformed XML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_output_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "study", "run", "--profile", "smoke", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'out'}: the study's output folder is a file"


def test_images_are_decoded_once_onto_one_canvas_with_boxes_scaled(tiny_voc):
    data = load_dataset(f"voc:{tiny_voc}")
    canvas = canvas_size(data.splits["train"], 128)
    assert canvas == (96, 128)  # 640x480 scaled to longer side 128
    images = load_images(data.splits["train"], canvas, 128)
    assert images.images.shape == (5, 3, 96, 128) and images.images.dtype == torch.uint8
    np.testing.assert_allclose(images.boxes[0].numpy(), data.splits["train"][0].boxes * 0.2, rtol=1e-6)


def test_flip_batch_moves_boxes_with_pixels():
    image = torch.zeros(1, 3, 4, 6, dtype=torch.uint8)
    image[0, :, 0, 0] = 255  # a lit pixel at the top-left corner, box around it
    boxes = [torch.tensor([[0.0, 0.0, 1.0, 1.0]])]
    for code, lit, box in ((1, (0, 5), [5, 0, 6, 1]), (2, (3, 0), [0, 3, 1, 4]), (3, (3, 5), [5, 3, 6, 4])):
        out, out_boxes = flip_batch(image, boxes, [code])
        assert out[0, 0, lit[0], lit[1]] == 255
        assert out_boxes[0].tolist() == [box]
