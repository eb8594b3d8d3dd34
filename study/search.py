"""Optuna search of a method's hyperparameters on the validation split (never test).

Every method gets the same budget (``--n-trials``, or ``budget_epochs`` counted in training epochs) over its own
space; ``baseline`` searches the settings every student row shares (learning rate, weight decay, epochs). The objective is the best validation mAP of
a student trained with the trial's hyperparameters; a pruner (median or hyperband) stops bad trials from their
validation mAP per epoch. ``--multi-objective`` searches (validation mAP up, GFLOPs down) with NSGA-II and writes
the Pareto set.

Storage: a SQLite file under the results folder by default (no server); any Optuna RDB URL
(``postgresql://user:pw@host/db``) or ``journal:PATH`` (a journal file) for many workers. RDB trials send a
heartbeat: a worker killed mid-trial leaves a trial that the next worker marks failed and retries with the same
parameters, so finished trials are never rerun and none is lost. Workers share one budget: a trial started after
the total was reached by other workers is marked failed ("budget reached") and not counted.
"""
from __future__ import annotations

import csv
import datetime
import json
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from methods.distill import METHODS as DISTILL_METHODS
from study.errors import StudyError
from methods.distill.distiller import parse_method
from study.cost import count_gflops
from study.plan import RunSpec, detector_config, make_run_id, plan_detector
from study.runner import Study

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TAP_CHOICES = {"faster_rcnn": ["c3,c4,c5", "c4,c5", "p3,p4,p5"], "fcos": ["c3,c4,c5", "c4,c5", "p3,p4,p5"],
               "yolo": ["p3,p4,p5", "p4,p5", "p3"]}  # YOLO's taps are its neck maps


def _draw(trial: optuna.Trial, name: str, space, taps: list[str]):
    if space == "taps":
        return trial.suggest_categorical(name, taps).split(",")
    kind, *args = space
    if kind == "choice":
        return trial.suggest_categorical(name, args[0])
    return trial.suggest_float(name, args[0], args[1], log=kind == "log")


def suggest(trial: optuna.Trial, method: str, detector: str = "faster_rcnn") -> dict:
    """The search space of each distillation method, as its module declares it (``SEARCH``; parts of a combination
    are searched jointly, their parameters prefixed with the part's name)."""
    out = {}
    for part in parse_method(method):
        name = (lambda key: f"{part}.{key}") if "+" in method else (lambda key: key)
        out[part] = {key: _draw(trial, name(key), space, TAP_CHOICES[detector])
                     for key, space in DISTILL_METHODS[part].SEARCH.items()}
    return out


def default_params(method: str, distill: dict, detector: str = "faster_rcnn") -> dict:
    """The point of :func:`suggest`'s space that is ``method``'s default (``distill``: the profile's settings), as
    Optuna parameters: a search's first trial, so that the tuned settings are never worse on validation than the
    literature's for want of trying them. A default outside the space (e.g. taps it does not offer) is left out
    and sampled."""
    params = {}
    for part in parse_method(method):
        name = (lambda key: f"{part}.{key}") if "+" in method else (lambda key: key)
        cfg = distill.get(part, {})
        for key, space in DISTILL_METHODS[part].SEARCH.items():
            if space == "taps":
                if cfg.get("taps") and ",".join(cfg["taps"]) in TAP_CHOICES[detector]:
                    params[name("taps")] = ",".join(cfg["taps"])
            elif cfg.get(key) is not None:
                params[name(key)] = cfg[key]
    return params


def suggest_shared(trial: optuna.Trial, train: dict, max_epochs: int) -> dict:
    """The settings every student row shares (the baseline's search): learning rate and weight decay around the
    profile's, and the number of epochs up to the profile's cap (half, three quarters or all of it)."""
    epochs = sorted({max(1, round(max_epochs * f)) for f in (0.5, 0.75, 1.0)})
    return {"train": {"lr": trial.suggest_float("lr", train["lr"] / 4, train["lr"] * 2, log=True),
                      "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True)},
            "epochs": trial.suggest_categorical("epochs", epochs)}


def open_storage(url: str | None, out_dir: Path, heartbeat_s: int = 10, grace_s: int = 30):
    """SQLite under ``out_dir`` by default; an RDB URL; or ``journal:PATH``."""
    if url and url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    url = url or f"sqlite:///{(Path(out_dir) / 'search.db').resolve()}"

    def connect():
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and how a kill is survived
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))

    try:
        return _retried(connect)
    except sqlalchemy.exc.SQLAlchemyError as exc:  # a URL it cannot parse, a database it cannot open
        raise StudyError(f"--storage {url}: cannot open the search database "
                         f"({str(exc.args[0] if exc.args else exc).splitlines()[0]})") from None


def _retried(make, attempts: int = 5):
    """``make()``, retried with a growing pause: workers starting together on a fresh database race to create its
    tables and the study."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as exc:
            if attempt == attempts - 1 or isinstance(exc, sqlalchemy.exc.ArgumentError):
                raise  # the last try, or a URL no retry can fix
            time.sleep(1 + attempt)


def study_name(profile: dict, detector: str, method: str) -> str:
    return f"{profile['name']}-{detector}-{method}"


def fail_orphans(study: optuna.Study, storage, grace_s: float) -> list[int]:
    """Fail, and hand to the stale-trial callback (which retries them), RUNNING trials that never recorded a
    heartbeat and started over ``grace_s`` ago: their worker died between creating the trial and its first heartbeat
    (the heartbeat thread records one as it starts). Optuna's own stale check reads heartbeats only, so such a trial
    would stay RUNNING for ever and count against the budget. Returns the trial numbers failed."""
    if not isinstance(storage, RDBStorage) or storage.heartbeat_interval is None:
        return []
    from optuna.storages._rdb import models  # the heartbeat table; Optuna has no public reader of it

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    session = storage.scoped_session()
    try:
        beating = {h.trial_id for h in session.query(models.TrialHeartbeatModel).filter(
            models.TrialHeartbeatModel.trial_id.in_([t._trial_id for t in running]))}
    finally:
        storage.scoped_session.remove()
    now, failed = datetime.datetime.now(), []
    callback = storage.get_heartbeat_stale_trial_callback()
    for t in running:
        if t._trial_id in beating or t.datetime_start is None or (now - t.datetime_start).total_seconds() <= grace_s:
            continue
        try:
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
                if callback is not None:
                    callback(study, study._storage.get_trial(t._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    return failed


def make_pruner(pruner: str, min_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner, which judges no trial before epoch ``min_epochs``: in the first epochs (warm-up, high learning
    rate) every trial's validation mAP is near 0 and their order is noise. Hyperband's brackets start there
    (rungs at ``min_epochs`` x 3^k epochs); the median pruner waits as long."""
    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=min_epochs),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=min_epochs, reduction_factor=3),
            "none": optuna.pruners.NopPruner}[pruner]()


def _create_study(storage, name: str, multi_objective: bool, pruner: str, seed: int, min_epochs: int = 1
                  ) -> optuna.Study:
    """Create or load the study (retried, see :func:`_retried`)."""
    if multi_objective:
        return _retried(lambda: optuna.create_study(study_name=name + "-mo", storage=storage, load_if_exists=True,
                                                    directions=["maximize", "minimize"],
                                                    sampler=optuna.samplers.NSGAIISampler(seed=seed)))
    chosen = make_pruner(pruner, min_epochs)
    return _retried(lambda: optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                                pruner=chosen))


class BudgetReached(RuntimeError):
    pass


def search(profile: dict, method: str, n_trials: int | None, out_dir: Path, storage_url: str | None = None,
           data_spec: str | None = None, device: str | None = None, pruner: str = "median",
           multi_objective: bool = False, log=print, detector: str = "faster_rcnn",
           budget_epochs: int | None = None, seed: int | None = None, shared: dict | None = None,
           min_epochs: int | None = None) -> optuna.Study:
    """Search ``method``'s settings on the validation split. ``baseline`` searches the settings every student row
    shares (:func:`suggest_shared`); a distillation method searches its own (:func:`suggest`) on top of ``shared``
    (the baseline search's best, or the profile's). The budget is ``n_trials`` finished trials, or ``budget_epochs``
    training epochs (a pruned trial counts the epochs it ran), shared by every worker of the study. Trials train the
    student of ``seed`` (default: the profile's first seed) against the first teacher seed's teacher."""
    if (n_trials is None) == (budget_epochs is None):
        raise StudyError("give exactly one budget: n_trials or budget_epochs")
    for key, value in (("n_trials", n_trials), ("budget_epochs", budget_epochs), ("min_epochs", min_epochs)):
        if value is not None and not (isinstance(value, int) and value >= (0 if key == "min_epochs" else 1)):
            raise StudyError(f"{key} must be a whole number >= {0 if key == 'min_epochs' else 1}, not {value!r}")
    if method != "baseline":
        try:
            parse_method(method)
        except ValueError as exc:
            raise StudyError(f"method: {exc}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = Study(profile, out_dir, data_spec, device, progress=False, log=log)
    plan = plan_detector(profile, detector, runner.data().name)
    student = next((s for s in plan if s.role == "student"), None)
    if student is None:
        raise StudyError(f"profile '{profile['name']}' trains no {detector} student to search for (methods: none)")
    teacher_run = runner.ensure_teacher(detector) if method != "baseline" else None
    search_cfg = profile["search"]
    storage = open_storage(storage_url, out_dir, search_cfg["heartbeat_s"], search_cfg["grace_s"])
    name = study_name(profile, detector, method)
    min_epochs = profile["tuning"]["min_epochs"] if min_epochs is None else min_epochs
    study = _create_study(storage, name, multi_objective, pruner, profile["teacher_seeds"][0], min_epochs)
    name = study.study_name
    seed = profile["seeds"][0] if seed is None else seed

    def spent(st: optuna.Study) -> float:
        """The budget used: finished trials, or epochs run (pruned trials count what they ran)."""
        trials = st.get_trials(deepcopy=False, states=FINISHED)
        return len(trials) if budget_epochs is None else sum(t.user_attrs.get("epochs_run", 0) for t in trials)

    limit = n_trials if budget_epochs is None else budget_epochs

    def objective(trial: optuna.Trial):
        fail_orphans(study, storage, search_cfg["grace_s"])  # before counting what is still running
        if budget_epochs is None:
            active = [t.number for t in study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))]
            if sorted(active).index(trial.number) >= n_trials:
                study.stop()
                raise BudgetReached(f"budget of {n_trials} trials reached by other workers")
        elif spent(study) >= budget_epochs:
            study.stop()
            raise BudgetReached(f"budget of {budget_epochs} epochs reached by other workers")
        hp = dict(student.hparams, search_seed=seed)
        if method == "baseline":
            settings = suggest_shared(trial, student.hparams["train"], student.hparams["role"]["epochs"])
        else:
            settings = {"distill": suggest(trial, method, detector)}
            hp |= {"distill": settings["distill"], "teacher_run": teacher_run}
        base = shared or {"train": {}, "epochs": student.hparams["role"]["epochs"]}
        train_settings = settings.get("train", base["train"])
        hp |= {"train": student.hparams["train"] | train_settings,
               "role": student.hparams["role"] | {"epochs": settings.get("epochs", base["epochs"])}}
        spec = RunSpec(make_run_id(detector, student.backbone, method, seed, hp), "student",
                       student.backbone, method, seed, hp, detector)
        epochs_run = [0]

        def report(record: dict):
            epochs_run[0] = record["epoch"]
            trial.set_user_attr("epochs_run", record["epoch"])
            if "val_map" in record and not multi_objective:
                trial.report(record["val_map"], record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}")

        model, _, result = runner.train_run(spec, out_dir / "search" / name / f"trial-{trial.number}", report)
        trial.set_user_attr("settings", settings)
        if "distill" in settings:
            trial.set_user_attr("distill", settings["distill"])
        if multi_objective:
            image = runner.image_set("val").images[0].float().div(255)
            return result["best_val_map"], count_gflops(model.cpu(), image)[0]
        return result["best_val_map"]

    def stop_at_budget(st: optuna.Study, _trial) -> None:
        if spent(st) >= limit:
            st.stop()

    fail_orphans(study, storage, search_cfg["grace_s"])
    if method != "baseline" and not multi_objective and not study.get_trials(deepcopy=False):
        study.enqueue_trial(default_params(method, detector_config(profile, detector)["distill"], detector),
                            skip_if_exists=True)  # the literature's weights first
    if spent(study) < limit:
        study.optimize(objective, n_trials=(n_trials * 3 if budget_epochs is None else 10_000),
                       callbacks=[stop_at_budget], catch=(BudgetReached,), gc_after_trial=True)
    write_search_report(study, out_dir / "search" / name, multi_objective)
    return study


def budget_summary(study: optuna.Study) -> dict:
    """Trials and epochs a search spent, pruned ones apart."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    return {"trials": len(trials), "pruned": len(pruned),
            "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            "pruned_epochs": sum(t.user_attrs.get("epochs_run", 0) for t in pruned)}


def best_distill(study: optuna.Study) -> dict:
    """The best trial's settings (``distill``, or a baseline search's ``train`` and ``epochs``) and its source
    (``default: True`` where the best is the default tried first, :func:`default_params`)."""
    best = study.best_trial
    source = {"study": study.study_name, "trial": best.number, "val_map": best.value}
    if best.system_attrs.get("fixed_params"):  # the enqueued default won: the tuned settings are the default ones
        source["default"] = True
    settings = best.user_attrs.get("settings") or {"distill": best.user_attrs["distill"]}
    return settings | {"source": source}


def load_tuned(profile: dict, out_dir: Path, storage_url: str | None) -> dict[str, dict[str, dict]]:
    """{detector: {method: best trial}} for each of the profile's (detector, method) pairs that has a finished
    search; the others keep their defaults."""
    storage = open_storage(storage_url, out_dir)
    tuned: dict[str, dict[str, dict]] = {}
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    for detector in profile["detectors"]:
        for method in ["baseline"] + [m for m in detector_config(profile, detector)["methods"] if m != "baseline"]:
            name = study_name(profile, detector, method)
            if name in names:
                study = optuna.load_study(study_name=name, storage=storage)
                if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                    tuned.setdefault(detector, {})[method] = best_distill(study)
    return tuned


def write_search_report(study: optuna.Study, out: Path, multi_objective: bool) -> None:
    """trials.csv, the best parameters (or the Pareto set) and Optuna's matplotlib plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    with (out / "trials.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "values", "duration_s"] + names)
        for t in trials:
            duration = t.duration.total_seconds() if t.duration else ""
            writer.writerow([t.number, t.state.name, t.values, duration] + [t.params.get(n, "") for n in names])
    if multi_objective:
        pareto = [{"trial": t.number, "val_map": t.values[0], "gflops": t.values[1], "params": t.params}
                  for t in study.best_trials]
        (out / "pareto.json").write_text(json.dumps(pareto, indent=1))
        plots = {"pareto_front": lambda: ovm.plot_pareto_front(study, target_names=["val mAP", "GFLOPs"])}
    else:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            (out / "best.json").write_text(json.dumps(best_distill(study), indent=1))
        plots = {"optimization_history": lambda: ovm.plot_optimization_history(study),
                 "param_importances": lambda: ovm.plot_param_importances(study)}
    for stem, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot()
        except (ValueError, RuntimeError) as exc:  # too few finished trials for that plot
            (out / f"{stem}.txt").write_text(f"not drawn: {exc}\n")
            continue
        ax.figure.tight_layout()
        ax.figure.savefig(out / f"{stem}.png", dpi=130)
        plt.close(ax.figure)
