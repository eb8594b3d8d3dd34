"""The benchmark kit: measurements of the study's own machinery and of the reference tools beside it.

- :mod:`study.bench.benchmarks`: ``python -m study bench`` (``nox -s bench``), one function per benchmark.
- :mod:`study.bench.parity`: ``python -m study parity`` (``nox -s parity``), this project's YOLO trainer against
  ultralytics' own on the same data, seeds and settings.
- :mod:`study.bench.reference_tools`: the reference tools' own training loops (torchvision's stock detection loop;
  ultralytics' trainer, which the rival rows use too, is the product module :mod:`study.ultralytics_trainer`).
- :mod:`study.bench.markdown`: ``bench.md`` from ``bench.json``.
"""
