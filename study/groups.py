"""A study's rows grouped by (detector, backbone, method): the unit every table row, figure point and statistic
describes; and the Pareto front of (cost, accuracy) points."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

RIVAL_SUFFIX = "@ultralytics"  # a row's backbone ends so when ultralytics' own trainer trained it (study.rival)


@dataclass
class Group:
    detector: str
    backbone: str
    method: str
    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def values(self, column: str) -> list[float]:
        return [float(r[column]) for r in self.ok if r.get(column) not in (None, "")]

    def mean(self, column: str) -> float | None:
        v = self.values(column)
        return statistics.fmean(v) if v else None

    def std(self, column: str) -> float | None:
        v = self.values(column)
        return statistics.stdev(v) if len(v) > 1 else (0.0 if v else None)

    def by_seed(self, column: str) -> dict[int, float]:
        return {int(r["seed"]): float(r[column]) for r in self.ok}


def group_runs(rows: list[dict]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in rows:
        key = (r["detector"], r["backbone"], r["method"])
        g = groups.setdefault(key, Group(*key))
        (g.ok if r["status"] == "ok" else g.failed).append(r)
    first_seen = {key: i for i, key in enumerate(groups)}
    teachers = {(d, b) for d, b, m in groups if m == "teacher"}

    def order(g: Group) -> tuple:  # teacher, baseline, baseline-long, distilled students, compressed teachers
        role = {"teacher": 0, "baseline": 1, "baseline-long": 2}.get(
            g.method, 4 if (g.detector, g.backbone) in teachers else 3)
        return g.detector, role, g.backbone, first_seen[(g.detector, g.backbone, g.method)]

    return sorted(groups.values(), key=order)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (cost, accuracy) that no other point beats: cost <= and accuracy >=, one strictly."""
    front = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front
