"""Shared fixtures: small datasets written on the fly from the bundled BCCD images."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

# Ultralytics' settings file goes to a throw-away folder, never to the home directory; set before any import of it.
os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="ultralytics-tests-")
os.environ["YOLO_OFFLINE"] = "1"

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


NETWORK_ATTEMPTS: list[str] = []


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # a unix socket path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Networking is unavailable to the tests: any connection or DNS look-up beyond loopback raises (and is
    recorded, so that a library swallowing the error still fails the test run). PostgreSQL on loopback is allowed."""
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded(real):
        def connect(self, address):
            if not _is_local(address):
                NETWORK_ATTEMPTS.append(repr(address))
                raise OSError(f"network access attempted in a test: {address!r}")
            return real(self, address)
        return connect

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local((host,)):
            NETWORK_ATTEMPTS.append(f"dns {host}")
            raise socket.gaierror(f"network access attempted in a test: DNS look-up of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = guarded(real_connect), guarded(real_connect_ex)
    socket.getaddrinfo = getaddrinfo
    yield NETWORK_ATTEMPTS
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = real_connect, real_connect_ex, real_getaddrinfo
    assert not NETWORK_ATTEMPTS, f"the tests tried to reach the network: {NETWORK_ATTEMPTS}"


@pytest.fixture
def ids() -> list[str]:
    return [f"BloodImage_{i:05d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 8)]


@pytest.fixture
def tiny_voc(tmp_path, ids) -> Path:
    return make_voc(tmp_path / "voc", {"train": ids[:5], "val": ids[5:7], "test": ids[7:]})
