"""The scheduling rules every executor shares (study.schedule), driven by a scripted pool: dependencies, teacher
affinity, one retry elsewhere after a worker's death, then failure with both reasons."""
from __future__ import annotations

from study.plan import RunSpec
from study.schedule import Job, choose, ready, run_jobs


def spec(run_id: str, teacher: str | None = None) -> RunSpec:
    return RunSpec(run_id, "student" if teacher else "teacher", "shallow" if teacher else "resnet50",
                   "hinton" if teacher else "teacher", 0, {"teacher_run": teacher} if teacher else {})


class Worker:
    def __init__(self, name: str, node: str):
        self.name, self.node, self.job, self.last_teacher = name, node, None, None


class ScriptedPool:
    """Workers that finish each run at the next wait(), except (worker, run) pairs in ``deaths`` whose worker dies;
    a dead worker is replaced on the same node, or dropped if its node is in ``lost``."""

    def __init__(self, workers: list[Worker], deaths=(), lost=()):
        self.workers, self.deaths, self.lost = workers, set(deaths), set(lost)
        self.log: list[tuple[str, str]] = []  # (worker, run id) in submission order
        self.closed = False

    def idle(self):
        return [w for w in self.workers if w.job is None]

    def busy(self):
        return any(w.job for w in self.workers)

    def nodes(self):
        return {w.node for w in self.workers}

    def can_place(self):
        return bool(self.workers)

    def submit(self, worker, job):
        worker.job = job
        self.log.append((worker.name, job.spec.run_id))

    def wait(self):
        ended = []
        for w in list(self.workers):
            if w.job is None:
                continue
            job, w.job = w.job, None
            if (w.name, job.spec.run_id) in self.deaths:
                self.workers.remove(w)
                if w.node not in self.lost:
                    self.workers.append(Worker(w.name + "'", w.node))
                ended.append((w, job, None, f"WorkerDied: {w.name}"))
            else:
                ended.append((w, job, {"run_id": job.spec.run_id, "status": "ok", "error": ""}, None))
        return ended

    def close(self):
        self.closed = True


def row_of(s):
    return {"run_id": s.run_id}


def test_ready_waits_for_every_read_run():
    jobs = [Job("", spec("t")), Job("", spec("s", teacher="t"))]
    assert [j.spec.run_id for j in ready(jobs, {"t", "s"})] == ["t"]
    assert [j.spec.run_id for j in ready(jobs, {"s"})] == ["t", "s"]


def test_choose_prefers_the_warm_teacher_and_keeps_a_retry_off_its_node():
    worker = Worker("a", "n1")
    worker.last_teacher = "t2"
    jobs = [Job("", spec("x", teacher="t1")), Job("", spec("y", teacher="t2"))]
    assert choose(jobs, worker, {"n1"}).spec.run_id == "y"
    died_here = Job("", spec("z"), deaths=[("n1", "WorkerDied")])
    assert choose([died_here], worker, {"n1", "n2"}) is None  # n2 has a live worker: wait for it
    assert choose([died_here], worker, {"n1"}) is died_here  # no other node: the same node will do


def test_runs_follow_dependencies_and_teacher_affinity():
    pool = ScriptedPool([Worker("a", "n1"), Worker("b", "n1")])
    rows = []
    todo = [(str(i), s) for i, s in enumerate([spec("t1"), spec("t2"), spec("s1", "t1"), spec("s2", "t2"),
                                               spec("s3", "t1"), spec("s4", "t2")])]
    assert run_jobs(todo, pool, rows.append, row_of, log=lambda *_: None) == {"retried": []}
    assert pool.log[:2] == [("a", "t1"), ("b", "t2")]  # no student before its teacher ended
    assert [name for name, r in pool.log if r in ("s1", "s3")] == ["a", "a"]  # a keeps t1's students
    assert [name for name, r in pool.log if r in ("s2", "s4")] == ["b", "b"]
    assert sorted(r["run_id"] for r in rows) == ["s1", "s2", "s3", "s4", "t1", "t2"] and pool.closed


def test_a_dead_workers_run_is_retried_once_on_another_node():
    pool = ScriptedPool([Worker("a", "n1"), Worker("b", "n2")], deaths={("a", "t")}, lost={"n1"})
    rows, lines = [], []
    out = run_jobs([("1", spec("t")), ("2", spec("u"))], pool, rows.append, row_of, log=lines.append)
    assert out == {"retried": ["t"]}
    assert pool.log == [("a", "t"), ("b", "u"), ("b", "t")]
    [t] = [r for r in rows if r["run_id"] == "t"]
    assert t == {"run_id": "t", "status": "ok", "error": "ok on retry after: WorkerDied: a"}
    assert len(rows) == 2 and any("retried once" in line for line in lines)


def test_a_second_death_records_the_run_failed_with_both_reasons():
    pool = ScriptedPool([Worker("a", "n1")], deaths={("a", "t"), ("a'", "t")})
    rows = []
    out = run_jobs([("1", spec("t")), ("2", spec("s", "t"))], pool, rows.append, row_of, log=lambda *_: None)
    assert out == {"retried": ["t"]}
    assert rows[0] == {"run_id": "t", "status": "failed", "error": "WorkerDied: a; WorkerDied: a'"}
    assert rows[1]["run_id"] == "s"  # still handed out: a real student run then fails on its own (no teacher)
    assert len(rows) == 2


def test_runs_left_when_no_worker_can_be_placed_are_recorded_failed():
    pool = ScriptedPool([Worker("a", "n1")], deaths={("a", "t")}, lost={"n1"})
    rows = []
    run_jobs([("1", spec("t")), ("2", spec("u"))], pool, rows.append, row_of, log=lambda *_: None)
    assert [(r["run_id"], r["status"]) for r in rows] == [("t", "failed"), ("u", "failed")]
    assert all(r["error"].startswith("NoWorker") for r in rows)
