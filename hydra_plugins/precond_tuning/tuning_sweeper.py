"""``hydra/sweeper=tuned``: a Hydra sweeper that tunes every arm of a comparison, then confirms.

It launches two batches through whatever launcher the user picked (basic, joblib, submitit):

1. **tuning** — every arm × every point of its grid × every tuning seed;
2. **confirmation** — every arm at its chosen point × every confirmation seed.

Between them it reads the tuning runs' ``summary.json``, chooses each arm's point with
:func:`precond.sweep.tuning.select` and writes ``selection.json`` into the sweep dir. The report
(``comparison.md``, ``verdicts.json``, plots) is written by the multirun-end callback. Each
run carries ``stage`` (tuning | confirmation) and ``arm`` in its config. Re-running with the
same ``hydra.sweep.dir`` skips finished runs and resumes interrupted ones (same job numbers).

The mathematics of the choice lives in :mod:`precond.sweep.tuning`; this file is only the Hydra glue.
"""
# no `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations
import copy
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("precond")


@dataclass
class TuningSweeperConf:
    _target_: str = "hydra_plugins.precond_tuning.tuning_sweeper.TuningSweeper"
    #: arm name → {overrides: {config key: value}, grid: {config key: [values]}}
    # (typed Any with a None default, so a whole mapping can also be given on the command line)
    arms: Any = None
    #: the search space every arm shares (an arm's own grid replaces keys of it)
    grid: Any = None
    tuning_seeds: list[Any] = field(default_factory=lambda: [0, 1])
    confirmation_seeds: list[Any] = field(default_factory=lambda: list(range(100, 110)))
    #: claims judged on the confirmation runs (precond.sweep.verdicts.Claim fields)
    claims: Any = None
    #: {relative_to: <arm>, factor: <number>}: the target set from that arm's tuning runs (null: target.value)
    target: Any = None
    #: overrides of the tuning runs only, for values the selection never reads: {curvature.enabled: false}
    tuning_overrides: Any = None
    #: {config key: {series: [arm, ...]}}: arms read as a sensitivity curve in that key (the report plots them)
    sensitivity: Any = None
    #: staged confirmation, e.g. [10, 20, 40]: look k judges the first stages[k] confirmation seeds and only the
    #: claims still inconclusive get more (null: one look on every confirmation seed)
    stages: Any = None
    #: problem instances: confirmation seed number i trains on data draw i mod data_draws (dataset.data_seed)
    data_draws: Any = 1


ConfigStore.instance().store(group="hydra/sweeper", name="tuned", node=TuningSweeperConf, provider="precond")


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class TuningSweeper(Sweeper):
    def __init__(self, arms: dict, grid: dict, tuning_seeds: list, confirmation_seeds: list, claims: list,
                 target: Any = None, tuning_overrides: Any = None, sensitivity: Any = None, stages: Any = None,
                 data_draws: Any = 1):
        from precond.errors import ConfigError
        from precond.sweep.tuning import MIN_FINAL_SELECTION_SEEDS, TuningSpec
        from precond.sweep.verdicts import check_families

        try:
            self.spec = TuningSpec(arms=_plain(arms), grid=_plain(grid) or {}, tuning_seeds=_plain(tuning_seeds),
                                   confirmation_seeds=_plain(confirmation_seeds), target=_plain(target),
                                   tuning_overrides=_plain(tuning_overrides) or {},
                                   sensitivity=_plain(sensitivity) or {}, stages=_plain(stages),
                                   data_draws=_plain(data_draws))
            self.claims = [_claim(i, c) for i, c in enumerate(claims or [])]
            check_families(self.claims, self.spec.stages[0], len(self.spec.tuning_seeds), len(self.spec.stages))
            for i, claim in enumerate(self.claims):
                if claim.selection == "final" and len(self.spec.tuning_seeds) < MIN_FINAL_SELECTION_SEEDS:
                    raise ConfigError(f"claims[{i}].selection", f"speed, or final with at least "
                                      f"{MIN_FINAL_SELECTION_SEEDS} tuning seeds (a median final value over fewer is "
                                      "one or two runs)", claim.selection,
                                      f"declare {MIN_FINAL_SELECTION_SEEDS} tuning_seeds")
        except ConfigError as err:
            _refuse(str(err.within("hydra.sweeper")))
        except TypeError as err:
            _refuse(f"hydra.sweeper.claims: expected claim, better, than, metric, direction — {err}")
        names = {arm.name for arm in self.spec.arm_list}
        for i, claim in enumerate(self.claims):
            for side in claim.sides:
                if not isinstance(side, float) and side.arm not in names:
                    _refuse(f"hydra.sweeper.claims[{i}]: expected one of the arms {sorted(names)}, "
                            f"got {side.arm!r}")
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from precond.run.files import write_text_atomically
        from precond.sweep.tuning import (
            FINAL_SELECTION_RULE,
            SELECTION_RULE,
            NoEligiblePoint,
            PointResult,
            data_draw,
            format_value,
            overrides_for,
            select,
            subdir_override,
        )
        from precond.sweep.verdicts import FINAL

        self._refuse_merged_mappings()
        fixed = self._fixed_overrides(arguments)
        arms = self.spec.arm_list
        self._refuse_replaced(arguments, arms)
        self._check_arms(arms, fixed)  # every refusal before the sweep dir exists: nothing is left behind
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        baseline = (self.spec.target or {}).get("relative_to")
        # an arm with one grid point has nothing to choose: it is confirmed without tuning runs (unless a relative
        # target is read from its tuning runs)
        searched = [arm for arm in arms if len(arm.points()) > 1 or arm.name == baseline]
        tuning = [(arm, point, seed) for arm in searched for point in arm.points() for seed in self.spec.tuning_seeds]
        log.info("tuning: %d runs (%s)", len(tuning), ", ".join(f"{a.name}: {len(a.points())} points" for a in arms))
        only = self.spec.tuning_overrides
        returns = self.launcher.launch([fixed + overrides_for(a, p, s, "tuning", only)
                                        + [subdir_override(a, p, s, "tuning")] for a, p, s in tuning],
                                       initial_job_idx=0)
        summaries = [_summary_of(r) for r in returns]
        log.info("tuning done: %s", batch_outcome(summaries))
        target = self._relative_target(tuning, returns, summaries)
        final_arms = {side.arm for c in self.claims if c.selection == "final" for side in c.sides
                      if not isinstance(side, float)}
        selection = {"rule": SELECTION_RULE, "target": target, "tuning_seeds": list(self.spec.tuning_seeds),
                     "confirmation_seeds": list(self.spec.confirmation_seeds), "stages": list(self.spec.stages),
                     "data_draws": self.spec.data_draws,
                     "fixed_overrides": fixed,
                     "claims": [c.as_dict() for c in self.claims], "sensitivity": self.spec.sensitivity, "arms": {}}
        if final_arms:
            selection["final_rule"] = FINAL_SELECTION_RULE
        chosen = {}
        for arm in arms:
            if arm not in searched:
                selection["arms"][arm.name] = {
                    "overrides": arm.overrides, "grid": arm.grid, "tuning_seeds": [],
                    "confirmation_seeds": list(self.spec.confirmation_seeds), "points": [],
                    "chosen": arm.points()[0], "at_edge": [], "score": None,
                    "basis": "the only point of its grid (nothing to tune: no tuning runs)"}
                chosen[arm.name] = (arm, arm.points()[0])
                if arm.name in final_arms:
                    selection["arms"][arm.name]["chosen_final"] = arm.points()[0]
                    chosen[arm.name + FINAL] = (arm, arm.points()[0])
                continue
            results = [PointResult(p, [summ for (a, pp, _), summ in zip(tuning, summaries)
                                       if a is arm and pp == p]) for p in arm.points()]
            entry = {"overrides": arm.overrides, "grid": arm.grid, "tuning_seeds": list(self.spec.tuning_seeds),
                     "confirmation_seeds": list(self.spec.confirmation_seeds),
                     "points": [{"point": r.point, "score": _jsonable_score(r.score()),
                                 "eligible": r.standing()[0] != "ineligible", "standing": r.standing()[0],
                                 "reason": r.standing()[1],
                                 "statuses": [s.get("status") for s in r.summaries]} for r in results]}
            try:
                choice = select(arm, results)
                entry.update(chosen=choice.chosen, at_edge=choice.at_edge, score=_jsonable_score(choice.score),
                             basis=choice.basis)
                chosen[arm.name] = (arm, choice.chosen)
                if choice.at_edge:
                    log.warning("arm %s: chosen %s at the edge of its grid for %s: widen the grid", arm.name,
                                choice.chosen, choice.at_edge)
            except NoEligiblePoint as err:  # the arm is invalid: no confirmation runs, every claim on it invalid
                entry.update(chosen=None, at_edge=[], invalid=str(err))
                log.error("%s", err)
            if arm.name in final_arms:  # the claims on final values read the arm at its final-value choice
                try:
                    final = select(arm, results, "final")
                    entry.update(chosen_final=final.chosen, at_edge_final=final.at_edge, basis_final=final.basis)
                    chosen[arm.name + FINAL] = (arm, final.chosen)
                except NoEligiblePoint as err:
                    entry.update(chosen_final=None, at_edge_final=[], invalid_final=str(err))
            selection["arms"][arm.name] = entry
        write_text_atomically(sweep_dir / "selection.json", json.dumps(selection, indent=2, default=str) + "\n")
        at_target = [f"target.value={target['value']!r}"] if target else []
        returns_by_look = []
        first_job = len(tuning)
        stages = self.spec.stages
        confirmed: list = []  # (arm, seed, summary) of every confirmation run launched so far
        for look, n in enumerate(stages):
            seeds = self.spec.confirmation_seeds[stages[look - 1] if look else 0:n]
            keys = list(chosen) if look == 0 else self._arms_to_extend(selection, tuning, summaries, confirmed, look)
            # one run per distinct (arm, point): an arm whose speed and final-value choices agree trains once
            points = list({(chosen[k][0].name, format_value(chosen[k][1])): chosen[k] for k in keys}.values())
            base = int(OmegaConf.select(self.config, "dataset.data_seed", default=0) or 0)
            first = stages[look - 1] if look else 0
            confirm = [(arm, {**point, **data_draw(self.spec, first + i, base)}, seed, point)
                       for arm, point in points for i, seed in enumerate(seeds)]
            if not confirm:
                break
            log.info("confirmation%s: %d runs", f" look {look + 1} of {len(stages)}" if len(stages) > 1 else "",
                     len(confirm))
            rets = self.launcher.launch([fixed + overrides_for(a, p, s, "confirmation") + at_target
                                         + [subdir_override(a, p, s, "confirmation")] for a, p, s, _ in confirm],
                                        initial_job_idx=first_job)
            first_job += len(confirm)
            look_summaries = [_summary_of(ret) for ret in rets]
            log.info("confirmation%s done: %s", f" look {look + 1}" if len(stages) > 1 else "",
                     batch_outcome(look_summaries))
            for (arm, _, seed, point), summary in zip(confirm, look_summaries):
                confirmed += [(key, seed, summary) for key, (a, p) in chosen.items() if a is arm and p == point]
            returns_by_look.append(list(rets))
        return [list(returns), *returns_by_look]

    def _arms_to_extend(self, selection: dict, tuning: list, summaries: list, confirmed: list, look: int) -> list:
        """The arms the claims still open after look ``look − 1`` need on the next look's seeds."""
        from precond.sweep.grid_metrics import grid_values, pareto_level
        from precond.sweep.verdicts import arms_to_extend, invalid_arms

        runs: dict = {}
        for arm, seed, summary in confirmed:
            runs.setdefault(arm, {})[seed] = summary
        invalid = invalid_arms(selection)
        levels = tuple(sorted({pareto_level(side.metric) for c in self.claims for side in c.sides
                               if not isinstance(side, float) and pareto_level(side.metric) is not None}))
        grids = {}
        for arm in selection["arms"]:
            runs_of_arm = [s for (a, _, _), s in zip(tuning, summaries) if a.name == arm]
            if runs_of_arm:
                grids[arm] = grid_values(runs_of_arm, selection["arms"][arm]["grid"],
                                         runs_of_arm[0].get("target_metric", "val/loss"), levels)
        return arms_to_extend(self.claims, runs, self.spec.confirmation_seeds, self.spec.stages, look - 1, invalid,
                              tuning=(grids, list(self.spec.tuning_seeds)))

    def _check_arms(self, arms, fixed: list[str]) -> None:
        """Validate every grid point of every arm before any run starts: a typo in an arm must not
        surface after the other arms' tuning runs (one line, exit 2). Each arm is composed once (its
        group choices); the other points only change values, applied to copies of that config."""
        from omegaconf import OmegaConf

        from precond.errors import ConfigError
        from precond.run.config import settings_from_config
        from precond.sweep.tuning import overrides_for

        for arm in arms:
            points = arm.points()
            overrides = fixed + overrides_for(arm, points[0], self.spec.tuning_seeds[0], "tuning",
                                              self.spec.tuning_overrides)
            try:
                base = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            except Exception as err:  # an unknown group option or key: Hydra's own message, first line
                _refuse(f"hydra.sweeper.arms.{arm.name}: {str(err).splitlines()[0]}")
            task = OmegaConf.masked_copy(base, [key for key in base if key != "hydra"])  # the run's part only
            for point in points:
                cfg = copy.deepcopy(task)  # DictConfig.copy is shallow: nested updates would reach task
                for key, value in point.items():
                    OmegaConf.update(cfg, key, value, merge=False)
                try:  # every per-run check: types, ranges, batch size vs data, target vs dataset, ...
                    settings_from_config(cfg)
                except ConfigError as err:
                    _refuse(f"hydra.sweeper.arms.{arm.name} at {point}: {err}")
            confirming = fixed + overrides_for(arm, points[0], self.spec.confirmation_seeds[0], "confirmation")
            try:  # what a confirmation run records (tuning-only overrides may switch measurements off)
                settings = settings_from_config(self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                                                   confirming))
            except ConfigError as err:
                _refuse(f"hydra.sweeper.arms.{arm.name} (confirmation): {err}")
            self._check_claim_metrics(arm.name, settings)

    def _relative_target(self, tuning: list, returns: list, summaries: list) -> Optional[dict]:
        """With ``target: {relative_to, factor}``: the target from the baseline's tuning runs, and every tuning
        summary's times to target re-read from its metrics with it (in place, for the selection)."""
        from precond.metrics import time_to_target
        from precond.sweep.callbacks import write_sweep_report
        from precond.sweep.tuning import RELATIVE_TARGET_RULE, NoEligiblePoint, relative_target

        if self.spec.target is None:
            return None
        baseline = [s for (arm, _, _), s in zip(tuning, summaries) if arm.name == self.spec.target["relative_to"]]
        try:
            value = relative_target(baseline, self.spec.target["factor"])
        except NoEligiblePoint as err:  # nothing to set the target from: the tuning runs' table, then stop
            sweep_dir = Path(self.config.hydra.sweep.dir)
            write_sweep_report(sweep_dir)
            print(f"error: hydra.sweeper.target.relative_to: {err}, so no target can be set and nothing is "
                  f"confirmed; the tuning runs' table is in {sweep_dir} — widen or move that arm's grid",
                  file=sys.stderr)
            raise SystemExit(1) from None
        for ret, summary in zip(returns, summaries):
            records = _records_of(ret)
            metric = summary.get("target_metric", "val/loss")
            trace = [(r["step"], r.get(metric), r.get("time/train_s", 0.0)) for r in records if metric in r]
            summary.update(time_to_target(trace, metric, value, held=summary.get("status") != "diverged"),
                           target_value=value)
        log.info("target set from arm %s: %s = %.6g", self.spec.target["relative_to"],
                 summaries[0].get("target_metric"), value)
        return {**self.spec.target, "value": value, "rule": RELATIVE_TARGET_RULE}

    def _check_claim_metrics(self, arm: str, settings) -> None:
        """Every claim side on this arm names a value its runs record (else no verdict could ever be given)."""
        from precond.run.config import why_not_recorded
        from precond.sweep.grid_metrics import GRID_METRICS, is_grid_metric

        for i, claim in enumerate(self.claims):
            for side in claim.sides:
                if isinstance(side, float) or side.arm != arm:
                    continue
                if claim.stage == "tuning" or is_grid_metric(side.metric):
                    grid = next(a for a in self.spec.arm_list if a.name == arm).grid
                    if claim.stage != "tuning" or not is_grid_metric(side.metric):
                        names = [*GRID_METRICS, "grid/pareto@S"]
                        _refuse(f"hydra.sweeper.claims[{i}]: grid metrics {names} go with stage: "
                                f"tuning and only there (got stage {claim.stage!r}, metric {side.metric!r})")
                    if len(grid) < 1 or max(len(v) for v in grid.values()) < 2:
                        _refuse(f"hydra.sweeper.claims[{i}].metric: {side.metric!r} for arm {arm}: its grid has "
                                "one point; a grid claim needs a grid")
                    continue
                reason = why_not_recorded(side.metric, settings)
                if reason is not None:
                    _refuse(f"hydra.sweeper.claims[{i}].metric: {side.metric!r} for arm {arm}: {reason}")

    def _set_by_the_sweep(self, arms) -> dict[str, str]:
        """Every key the sweep sets in its runs' overrides (they come after the command line's, so they win), with
        where to set it instead."""
        seeds = "the tuned sweep sets each run's seed: change hydra.sweeper.tuning_seeds or confirmation_seeds"
        out = {"seed": seeds, "stage": "the sweep's own tag of each run", "arm": "the sweep's own tag of each run"}
        for key in self.spec.tuning_overrides:
            out[key] = "hydra.sweeper.tuning_overrides sets it for the tuning runs: change it there"
        if self.spec.data_draws > 1:
            out["dataset.data_seed"] = "hydra.sweeper.data_draws alternates it over the confirmation seeds"
        for arm in arms:
            for key in arm.overrides:
                out.setdefault(key, f"arm {arm.name}'s overrides set it: change hydra.sweeper.arms.{arm.name}."
                                    f"overrides")
            for key in {k for point in arm.points() for k in point}:
                out.setdefault(key, f"arm {arm.name} searches it in its grid: set hydra.sweeper.grid.{key}=[value] "
                                    f"(or the arm's grid) to fix it")
        return out

    def _refuse_replaced(self, arguments: list[str], arms) -> None:
        """A command-line value the sweep would replace in every run is refused, not silently dropped."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        replaced = self._set_by_the_sweep(arms)
        for override in parser.parse_overrides(arguments):
            key = override.key_or_group
            if key in replaced and not override.is_delete():
                _refuse(f"{key}: expected no value on the command line of a tuned sweep, got "
                        f"{override.input_line!r} — {replaced[key]}")

    def _refuse_merged_mappings(self) -> None:
        """A mapping given on the command line for a sweeper key is *merged* into the experiment's mapping (Hydra's
        rule for dict values), so ``hydra.sweeper.arms={}`` or ``{a: …}`` leaves every declared arm in place. When
        the composed mapping holds entries the command line did not give, the value did not do what it says:
        refused, with the per-entry overrides that do."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for override in parser.parse_overrides(list(self.config.hydra.overrides.hydra)):
            key = override.key_or_group
            if not key.startswith("hydra.sweeper.") or override.is_delete() or override.is_sweep_override():
                continue
            given = override.value()
            composed = OmegaConf.select(self.config, key)
            if not isinstance(given, dict) or not isinstance(composed, DictConfig):
                continue
            kept = sorted(str(k) for k in composed if k not in given)
            if kept:
                _refuse(f"{key}: expected the whole mapping, got {override.input_line!r}, which Hydra merged into "
                        f"the experiment's {key} (still holding {', '.join(kept)}) — set {key}.NAME=… to change or "
                        f"add one entry, ~{key}.NAME to drop one")

    def _fixed_overrides(self, arguments: list[str]) -> list[str]:
        """The command line's overrides, applied to every run; a sweep list there is refused."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        out = []
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                _refuse(f"{override.get_key_element()}: expected one value with hydra/sweeper=tuned, got a sweep "
                        f"— put the values in the experiment's hydra.sweeper.grid (or an arm's grid)")
            out.append(override.input_line)
        return out


def _claim(index: int, declared):
    """One declared claim, its errors named by its place (``hydra.sweeper.claims[2].margin``)."""
    from precond.errors import ConfigError
    from precond.sweep.verdicts import Claim

    fields = _plain(declared)
    if not isinstance(fields, dict):
        raise ConfigError(f"claims[{index}]", "a mapping {claim: ..., better: ..., than: ..., metric: ...}", fields)
    try:
        return Claim(**fields)
    except ConfigError as err:
        raise err.within(f"claims[{index}]") from None


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _jsonable_score(score: tuple) -> list:
    return [None if isinstance(v, float) and v in (float("inf"), float("-inf")) else v for v in score]


def _records_of(ret: JobReturn) -> list:
    """The run's metrics.jsonl records (none when unreadable)."""
    try:
        path = Path(ret.hydra_cfg.hydra.runtime.output_dir) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (AttributeError, OSError, ValueError):
        return []


def batch_outcome(summaries: list[dict]) -> str:
    """One line for a batch of runs (their own lines stay in their train.log): ``170 runs: 160 completed,
    10 diverged; 120 reached the target``."""
    statuses = [s.get("status", "failed") for s in summaries]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(sorted(statuses)))
    reached = sum(s.get("steps_to_target") is not None for s in summaries)
    return f"{len(summaries)} runs: {counts}; {reached} reached the target"


def _summary_of(ret: JobReturn) -> dict:
    """The run's summary.json (a run that left none counts as failed)."""
    try:
        run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (AttributeError, OSError, ValueError):
        return {"status": "failed", "error": "no readable summary.json"}

