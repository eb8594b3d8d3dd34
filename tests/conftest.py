"""Shared fixtures: small datasets written on the fly from the bundled BCCD images."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BCCD = Path(__file__).resolve().parent.parent / "data" / "bccd"


def make_voc(root: Path, splits: dict[str, list[str]], xml_overrides: dict[str, str] | None = None) -> Path:
    """A VOC folder with the named BCCD images per split; ``xml_overrides`` replaces an annotation's text."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            shutil.copy(BCCD / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
            shutil.copy(BCCD / "Annotations" / f"{i}.xml", root / "Annotations")
    for name, text in (xml_overrides or {}).items():
        (root / "Annotations" / f"{name}.xml").write_text(text)
    return root


def voc_xml(objects: list[tuple[str, tuple[int, int, int, int]]], width: int = 640, height: int = 480) -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return f"<annotation><size><width>{width}</width><height>{height}</height></size>{objs}</annotation>"


@pytest.fixture
def ids() -> list[str]:
    return [f"BloodImage_{i:05d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 8)]


@pytest.fixture
def tiny_voc(tmp_path, ids) -> Path:
    return make_voc(tmp_path / "voc", {"train": ids[:5], "val": ids[5:7], "test": ids[7:]})
