"""`mae ablate SPEC.yaml --output DIR`: a sweep of training runs, evaluated, as tables and plots.

A spec (YAML or JSON) names the settings every run shares and the ones to sweep:

    name: mask-ratio
    base: {data: cifar10, variant: mae_vit_tiny_patch4, epochs: 20, warmup_epochs: 2}
    vary: {mask_ratio: [0.25, 0.5, 0.75, 0.9]}
    eval: {data: cifar10, method: [knn, linear], limit: 10000}

`base` holds any `mae train` setting (`TrainConfig`'s names); `vary` maps settings to
lists of values, one run per value, one factor at a time (each key varied alone, the
others at base). A run whose settings equal the base's is the base run, trained once and
shared by every factor. Runs are ordinary training folders, DIR/runs/<name>/ (name:
`mask_ratio=0.25`, or `base`), so `mae eval`, `mae curve` and `mae push` work on them.
Every run has the base's seed, hence the same initial weights (for one architecture) and
the same data order.

Running the command again continues the sweep: finished runs are skipped, interrupted
ones resumed (`resume="auto"`), and each run's evaluation is cached in
DIR/runs/<name>/ablate_eval.json, keyed by the eval spec and the final weights. A run
folder whose settings differ from what the spec now asks is refused, by name, rather
than mixed into the table. Every input is checked before the first run starts.

Output: DIR/results.json (one row per run), DIR/results.md (a table per factor, the base
value marked) and DIR/<factor>.png (top-1 against the factor's values, as the paper's
Fig. 5: a line for numbers, bars for names; needs matplotlib).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import statistics
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import MAEConfig, TrainConfig, default_workers, did_you_mean, variant_config
from .errors import MAEError, MAEValueError, MissingDependency, TrainingError
from .files import sha256_file, write_atomic

SPEC_KEYS = ("name", "base", "vary", "eval")
EVAL_KEYS = ("data", "test_data", "method", "limit", "pooling", "seed", "batch_size")
METHODS = ("knn", "linear")
METHOD_NAMES = {"knn": "k-NN", "linear": "linear probe"}
EVAL_FILE = "ablate_eval.json"  # in each run folder: the cached evaluation
TIMES_FILE = "ablate_train.json"  # in each run folder: wall time of each training segment
# Settings the sweep sets itself (where, how to continue) or holds fixed across runs.
NOT_IN_BASE = {"output": "each run's folder is DIR/runs/<name>", "resume": "the sweep resumes"}
NOT_VARIED = {
    **NOT_IN_BASE,
    "seed": "every run takes the base's seed, so that runs differ in the factor alone",
    "data": "every run trains on the base's data, in the same order",
}
Progress = Callable[[str], None]


# -- the spec ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSpec:
    """How each run is evaluated: `evaluate.evaluate_sources`, as `mae eval` calls it."""

    data: str
    test_data: str | None = None
    methods: tuple[str, ...] = METHODS
    limit: int | None = None
    pooling: str = "cls"
    seed: int = 0
    batch_size: int = 256

    def key(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        return d


@dataclass(frozen=True)
class Run:
    """One training run of the sweep: its folder name and the settings given to it."""

    name: str
    overrides: dict[str, Any]  # the settings that differ from the base
    settings: dict[str, Any]  # base + overrides, as given to `train`


@dataclass(frozen=True)
class Factor:
    """A swept setting: its values in spec order, the run of each, and the base's value."""

    key: str
    values: list[Any]
    runs: list[str]
    base_value: Any

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values)


@dataclass(frozen=True)
class AblationSpec:
    name: str
    base: dict[str, Any]
    factors: list[Factor]
    runs: list[Run]
    eval: EvalSpec
    source: str = ""  # the spec file, for the tables


_FLAGS = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
_DEFAULTS = {f.name: f.default for f in _FLAGS if f.default is not dataclasses.MISSING}
_MODEL_FIELDS = {f.name for f in dataclasses.fields(MAEConfig)}


def load_spec(path: str | Path) -> AblationSpec:
    """Read and check a spec file (YAML or JSON); `MAEValueError` names what is wrong."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except OSError as e:
        raise MAEValueError(f"cannot read ablation spec {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        msg = str(e).replace("\n", " ")
        raise MAEValueError(f"ablation spec {path} is not valid YAML: {msg}") from None
    return parse_spec(data, where=str(path), default_name=path.stem)


def parse_spec(data: Any, where: str = "spec", default_name: str = "ablation") -> AblationSpec:
    """Check a spec's mapping (`where` names it in errors) and list its runs."""

    def fail(msg: str) -> MAEValueError:
        return MAEValueError(f"{where}: {msg}")

    if not isinstance(data, dict):
        raise fail("an ablation spec is a mapping with base, vary and eval")
    for key in data:
        if key not in SPEC_KEYS:
            raise fail(f"unknown key {key!r}{did_you_mean(str(key), SPEC_KEYS)}")
    missing = [k for k in ("base", "vary") if not data.get(k)]
    if missing:
        raise fail(
            f"no {' and no '.join(missing)}: a spec needs base (the settings every run "
            "shares) and vary (the settings to sweep, each with a list of values)"
        )
    if not isinstance(data["base"], dict) or not isinstance(data["vary"], dict):
        raise fail("base and vary must each be a mapping of mae train settings")
    base = {_setting_name(k, "base", fail): v for k, v in data["base"].items()}
    base = {k: _coerce(k, v, "base", fail) for k, v in base.items()}
    for key in base:
        if key in NOT_IN_BASE:
            raise fail(f"base gives {key}, which the sweep sets: {NOT_IN_BASE[key]}")
    if "data" not in base:
        raise fail("base has no data: give the training images (e.g. data: cifar10)")
    factors, runs = _plan(base, data["vary"], fail)
    ev = _parse_eval(data.get("eval") or {}, base["data"], fail)
    name = data.get("name") or default_name
    return AblationSpec(str(name), base, factors, runs, ev, where)


def _setting_name(key: Any, section: str, fail: Callable[[str], MAEValueError]) -> str:
    name = str(key).replace("-", "_")
    if name not in _DEFAULTS and name not in ("data", "output"):
        known = [f.name for f in _FLAGS]
        raise fail(
            f"unknown setting {key!r} in {section}{did_you_mean(name, known)}; the settings "
            "are mae train's (mae train --help)"
        )
    return name


def _coerce(key: str, value: Any, section: str, fail: Callable[[str], MAEValueError]) -> Any:
    """`value` as the type of `TrainConfig.key`: YAML reads 1e-3 as a string, and a wrong
    type would otherwise surface mid-sweep."""
    kind = typing.get_type_hints(TrainConfig)[key]
    args = typing.get_args(kind)
    base = next((t for t in args if t is not type(None)), kind) if args else kind
    if value is None and type(None) in args:
        return None
    if base is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if isinstance(value, int) else value
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if not ok:
        raise fail(f"{section} {key}: expected {base.__name__}, got {value!r}")
    return value


def _plan(
    base: dict[str, Any], vary: dict[Any, Any], fail: Callable[[str], MAEValueError]
) -> tuple[list[Factor], list[Run]]:
    """One run per value of each factor, the others at base; runs equal to the base's
    settings are one run, `base`."""
    factors: list[Factor] = []
    runs: dict[str, Run] = {}
    for raw_key, values in vary.items():
        key = _setting_name(raw_key, "vary", fail)
        if key in NOT_VARIED:
            raise fail(f"vary {key}: {key} cannot be swept: {NOT_VARIED[key]}")
        if not isinstance(values, list):
            raise fail(f"vary {key} must be a list of values, got {values!r}")
        if not values:
            raise fail(f"vary {key} has no values: give at least one")
        values = [_coerce(key, v, "vary", fail) for v in values]
        for i, v in enumerate(values):
            if v in values[:i]:
                raise fail(f"vary {key} lists {v!r} twice")
        base_value = _base_value(base, key)
        names = []
        for v in values:
            overrides = {} if v == base_value else {key: v}
            name = run_name(overrides)
            if name in runs and runs[name].overrides != overrides:
                raise fail(f"two runs would share the folder name {name!r}: rename a value")
            runs.setdefault(name, Run(name, overrides, {**base, **overrides}))
            names.append(name)
        factors.append(Factor(key, values, names, base_value))
    for run in runs.values():  # every run's settings are valid before any starts
        try:
            TrainConfig(**{**run.settings, "output": "."})
        except MAEValueError as e:
            raise fail(f"run {run.name}: {e}") from None
    return factors, list(runs.values())


def _base_value(base: Mapping[str, Any], key: str) -> Any:
    """The value `key` has in the base run: the base's own, else mae train's default, and
    where that default is "the variant's" (None: the decoder's size), the variant's value,
    so that `decoder_depth: 4` on ViT-Ti is the base run rather than a copy of it."""
    value = base.get(key, _DEFAULTS.get(key))
    if value is None and key in _MODEL_FIELDS:
        with contextlib.suppress(MAEValueError):  # an unknown variant: the settings check says
            value = getattr(variant_config(base.get("variant", _DEFAULTS["variant"])), key)
    return value


def run_name(overrides: Mapping[str, Any]) -> str:
    """The folder name of a run: `mask_ratio=0.25` (keys joined by `,`), `base` for none;
    only letters, digits and `._=+,-` (anything else becomes `_`)."""
    if not overrides:
        return "base"
    text = ",".join(f"{k}={_value_text(v)}" for k, v in overrides.items())
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)


def _value_text(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def _parse_eval(raw: Any, base_data: str, fail: Callable[[str], MAEValueError]) -> EvalSpec:
    if not isinstance(raw, dict):
        raise fail("eval must be a mapping (data, method, limit, ...)")
    for key in raw:
        if key not in EVAL_KEYS:
            raise fail(f"unknown eval key {key!r}{did_you_mean(str(key), EVAL_KEYS)}")
    methods = raw.get("method", list(METHODS))
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods:
        raise fail(f"eval method must be knn, linear or a list of them, got {methods!r}")
    for m in methods:
        if m not in METHODS:
            raise fail(
                f"eval method {m!r} is not one of {', '.join(METHODS)}"
                f"{did_you_mean(str(m), METHODS)}"
            )
    for key in ("limit", "batch_size"):
        v = raw.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise fail(f"eval {key} must be a positive integer, got {v!r}")
    if raw.get("pooling", "cls") not in ("cls", "mean"):
        raise fail(f"eval pooling must be cls or mean, got {raw['pooling']!r}")
    for key in ("data", "test_data"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise fail(f"eval {key} must be a data source, got {raw[key]!r}")
    if not isinstance(raw.get("seed", 0), int):
        raise fail(f"eval seed must be an integer, got {raw['seed']!r}")
    return EvalSpec(
        data=raw.get("data") or base_data,
        test_data=raw.get("test_data"),
        methods=tuple(dict.fromkeys(methods)),
        limit=raw.get("limit"),
        pooling=raw.get("pooling", "cls"),
        seed=raw.get("seed", 0),
        batch_size=raw.get("batch_size", 256),
    )


def check_data(spec: AblationSpec) -> None:
    """Every data source the sweep reads exists (and the eval data has labels and a test
    split), before any run starts."""
    from .sources import held_out_source, index_source, train_split

    def indexed(source: str, limit: int | None, what: str) -> Any:
        try:
            return index_source(source, limit)
        except MAEError as e:
            raise MAEValueError(f"{spec.source}: {what}: {e}") from None

    for data, limit in {(r.settings["data"], r.settings.get("limit")) for r in spec.runs}:
        indexed(data, limit, "base data")
    ev = spec.eval
    test = ev.test_data or held_out_source(ev.data)
    if test is None:
        raise MAEValueError(
            f"{spec.source}: eval data {ev.data} has no held-out split of its own: give "
            "eval test_data"
        )
    for source, what in ((train_split(ev.data), "eval data"), (test, "eval test_data")):
        if not indexed(source, ev.limit, what).classes:
            raise MAEValueError(
                f"{spec.source}: {what} {source} has no labels: evaluation needs one "
                "subfolder per class"
            )


# -- the sweep -----------------------------------------------------------------------------
@dataclass
class AblationResult:
    spec: AblationSpec
    output: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    note: str | None = None  # e.g. why no plot was written
    stopped: str | None = None  # the run a signal stopped, if one did
    counts: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


def run_ablation(
    spec_path: str | Path, output: str | Path, progress: Progress = print, dry_run: bool = False
) -> AblationResult:
    """Train (or resume, or skip) every run of the spec into OUTPUT/runs/<name>, evaluate
    each (or read its cached evaluation), then write results.json, results.md and the
    plots into OUTPUT. A signal stops the sweep after the current run checkpoints
    (`stopped` names it); the same call later continues it."""
    t0 = time.perf_counter()
    spec = load_spec(spec_path)
    check_data(spec)
    out = Path(output)
    folders = {run.name: out / "runs" / run.name for run in spec.runs}
    for run in spec.runs:  # an edited spec is refused before any run trains
        check_run_folder(run, folders[run.name])
    result = AblationResult(spec, out)
    counts = result.counts = dict.fromkeys(
        ("trained", "resumed", "skipped", "evaluated", "cached"), 0
    )
    n = len(spec.runs)
    if dry_run:
        for i, run in enumerate(spec.runs, 1):
            progress(f"[{i}/{n}] {run.name}: {_state(run, folders[run.name])[1]}")
        return result
    for i, run in enumerate(spec.runs, 1):
        folder = folders[run.name]
        state, said = _state(run, folder)
        progress(f"[{i}/{n}] {run.name}: {said}")
        if state != "done":
            counts["trained" if state == "new" else "resumed"] += 1
            if _train(run, folder) is None:
                result.stopped = run.name
                return result
        else:
            counts["skipped"] += 1
        row, cached = _evaluate(run, folder, spec.eval)
        counts["cached" if cached else "evaluated"] += 1
        result.rows.append(row)
        progress(
            f"[{i}/{n}] {run.name}: {'cached evaluation' if cached else 'evaluated'}: "
            f"{_row_line(row)}"
        )
    result.files, result.note = write_results(result)
    result.wall_s = time.perf_counter() - t0
    return result


def check_run_folder(run: Run, folder: Path) -> None:
    """Refuse a run folder trained with settings other than the run's now (the spec was
    edited), naming the run and each difference."""
    from .resume import RESUMABLE_CHANGES

    saved_file = folder / "config.json"
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text()).get("train", {})
    now = TrainConfig(**{**run.settings, "output": str(folder)}).to_dict()
    # One process: the batch is global. The precision a resume may change is still part of
    # a sweep's run: runs of one table are trained alike.
    skip = (RESUMABLE_CHANGES - {"batch_size", "precision"}) | {"extra"}
    diffs = [
        f"{k}: run {saved.get(k, _DEFAULTS.get(k))!r} vs spec {v!r}"
        for k, v in now.items()
        if k not in skip and saved.get(k, _DEFAULTS.get(k)) != v
    ]
    if diffs:
        raise TrainingError(
            f"run {run.name} in {folder} was trained with other settings than the spec now "
            f"gives ({'; '.join(diffs)}): the spec was edited since. Restore those settings, "
            "use another --output, or delete that run folder to train it again"
        )


def _state(run: Run, folder: Path) -> tuple[str, str]:
    """("done" | "resume" | "new", what to say) for a run's folder."""
    from .resume import newest_step

    if _finished(folder, run.settings.get("max_steps")):
        return "done", "finished, skipped"
    step = newest_step(folder) if folder.is_dir() else 0
    if step:
        return "resume", f"resuming from the checkpoint at step {step}"
    return "new", "training"


def _finished(folder: Path, max_steps: int | None) -> bool:
    """final/ is there and holds the whole schedule, or the spec's `max_steps` of it."""
    try:
        total = json.loads((folder / "config.json").read_text())["total_steps"]
        summary = json.loads((folder / "final" / "mae_config.json").read_text())["training"]
    except (OSError, ValueError, KeyError):
        return False
    end = total if max_steps is None else min(max_steps, total)
    return (folder / "final" / "model.safetensors").is_file() and summary["steps"] >= end


def _train(run: Run, folder: Path) -> Path | None:
    """Train or resume the run; its wall time is added to TIMES_FILE even when it fails."""
    from .train import train

    t0 = time.perf_counter()
    try:
        return train({**run.settings, "output": str(folder), "resume": "auto"})
    except MAEError as e:
        raise TrainingError(f"run {run.name} ({folder}): {e}") from e
    finally:
        if folder.is_dir():
            times = _read_json(folder / TIMES_FILE) or {"segments_s": []}
            times["segments_s"].append(round(time.perf_counter() - t0, 3))
            write_atomic(folder / TIMES_FILE, json.dumps(times) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _evaluate(run: Run, folder: Path, ev: EvalSpec) -> tuple[dict[str, Any], bool]:
    """The run's row, evaluated by `evaluate_sources` (what `mae eval` runs) or read from
    its cache when the eval spec and the final weights are the same; -> (row, cached)."""
    final = folder / "final"
    weights = {p.name: sha256_file(p) for p in sorted(final.glob("*.safetensors"))}
    key = {"eval": ev.key(), "weights_sha256": weights}
    cache = _read_json(folder / EVAL_FILE)
    cached = isinstance(cache, dict) and cache.get("key") == key
    if cached:
        evaluation = cache["result"]
    else:
        evaluation = _evaluate_run(run, final, ev)
        write_atomic(folder / EVAL_FILE, json.dumps({"key": key, "result": evaluation}) + "\n")
    return _row(run, folder, evaluation), cached


def _evaluate_run(run: Run, final: Path, ev: EvalSpec) -> dict[str, Any]:
    """`evaluate_sources` on the run's final model, on the run's device with its math
    threads (--threads, as its training had) and loader processes."""
    import torch

    from .distributed import math_threads
    from .evaluate import evaluate_sources

    workers = run.settings.get("num_workers")
    before = torch.get_num_threads()
    torch.set_num_threads(math_threads(run.settings.get("threads"))[0])
    try:
        return evaluate_sources(
            str(final),
            ev.data,
            ev.test_data,
            methods=ev.methods,
            poolings=(ev.pooling,),
            limit=ev.limit,
            baseline=False,
            reconstruction=True,
            batch_size=ev.batch_size,
            num_workers=default_workers() if workers is None else workers,
            device=run.settings.get("device", "auto"),
            seed=ev.seed,
        )
    finally:
        torch.set_num_threads(before)


def _row(run: Run, folder: Path, evaluation: dict[str, Any]) -> dict[str, Any]:
    top1 = {r["method"]: r["top1"] for r in evaluation["results"]}
    rec = evaluation.get("reconstruction") or {}
    summary = json.loads((folder / "final" / "mae_config.json").read_text())["training"]
    times = _read_json(folder / TIMES_FILE) or {}
    segments = times.get("segments_s")
    return {
        "name": run.name,
        "overrides": run.overrides,
        "folder": f"runs/{run.name}",
        "knn_top1": top1.get("knn"),
        "linear_top1": top1.get("linear"),
        "recon_loss": rec.get("loss"),
        "recon_mask_ratio": rec.get("mask_ratio"),
        "recon_images": rec.get("images"),
        "images_per_s": _images_per_s(folder),
        "wall_s": round(sum(segments), 1) if segments else None,
        "steps": summary.get("steps"),
        "train_loss": summary.get("final_loss"),
    }


def _images_per_s(folder: Path) -> float | None:
    """The median of the run's logged training rates (metrics.jsonl)."""
    from .curve import read_metrics

    try:
        rates = [r["images_per_s"] for r in read_metrics(folder) if "images_per_s" in r]
    except (OSError, MAEError):
        return None
    return round(statistics.median(rates), 1) if rates else None


def _row_line(row: dict[str, Any]) -> str:
    parts = [
        f"{label} {row[k]:.2f}"
        for k, label in (("knn_top1", "k-NN"), ("linear_top1", "linear"))
        if row[k] is not None
    ]
    if row["recon_loss"] is not None:
        parts.append(f"recon. loss {row['recon_loss']:.4f} at mask {row['recon_mask_ratio']:g}")
    return ", ".join(parts)


# -- what the sweep writes -----------------------------------------------------------------
def write_results(result: AblationResult) -> tuple[list[Path], str | None]:
    """results.json, results.md and one PNG per factor -> (files written, a note when the
    plots could not be drawn)."""
    out, spec = result.output, result.spec
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": spec.name,
        "spec": spec.source,
        "base": spec.base,
        "eval": spec.eval.key(),
        "factors": {
            f.key: {"values": f.values, "runs": f.runs, "base": f.base_value} for f in spec.factors
        },
        "runs": result.rows,
    }
    files = [out / "results.json", out / "results.md"]
    write_atomic(files[0], json.dumps(doc, indent=2) + "\n")
    write_atomic(files[1], format_markdown(result) + "\n")
    try:
        files += [plot_factor(result, f) for f in spec.factors]
    except MissingDependency as e:
        return files, str(e)
    return files, None


def _eval_line(spec: AblationSpec) -> str:
    ev = spec.eval
    methods = " and ".join(METHOD_NAMES[m] for m in ev.methods)
    test = ev.test_data or "its held-out split"
    size = f"{ev.limit} images per split" if ev.limit else "every image"
    return f"{methods} top-1 (%) on {ev.data} (train-split features, tested on {test}; {size})"


def format_markdown(result: AblationResult) -> str:
    spec = result.spec
    base = ", ".join(f"{k} {_value_text(v)}" for k, v in spec.base.items())
    seed = spec.base.get("seed", _DEFAULTS["seed"])
    lines = [
        f"# Ablation: {spec.name}",
        "",
        f"Spec: {spec.source}. Base: {base} (other settings: mae train's defaults). Every "
        f"run has seed {seed} and the same data order; one factor varies at a time.",
        "",
        f"Accuracy: {_eval_line(spec)}, {spec.eval.pooling} pooling. Reconstruction loss: "
        "the MAE loss on the test images, masks seeded by "
        f"{spec.eval.seed}, each run at its own settings (the mask ratio in brackets; a "
        "run's target and mask strategy too), so it compares like with like only where "
        "those are the same. img/s: the median training rate logged; wall: training time.",
    ]
    rows = {r["name"]: r for r in result.rows}
    acc = [(f"{k}_top1", METHOD_NAMES[k]) for k in spec.eval.methods]
    for f in spec.factors:
        header = [f.key, *(f"{label} top-1" for _, label in acc)]
        header += ["recon. loss", "img/s", "wall (s)", "steps", "run"]
        lines += ["", f"## {f.key}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join(["---", *["--:"] * (len(header) - 2), "---"]) + "|")
        for value, name in zip(f.values, f.runs, strict=True):
            r = rows[name]
            label = _value_text(value)
            cells = [f"**{label}** (base)" if value == f.base_value else label]
            cells += [_num(r[k], ".2f") for k, _ in acc]
            loss = _num(r["recon_loss"], ".4f")
            if r["recon_loss"] is not None:
                loss += f" ({r['recon_mask_ratio']:g})"
            cells += [loss, _num(r["images_per_s"], ".0f"), _num(r["wall_s"], ".0f")]
            cells += [str(r["steps"]), f"runs/{name}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def plot_factor(result: AblationResult, factor: Factor) -> Path:
    """OUTPUT/<factor>.png: top-1 against the factor's values, a line per method for a
    numeric factor, grouped bars for a categorical one; the base value is marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency(
            "the plots need matplotlib: pip install 'mae-hub[plot]' (results.json and "
            "results.md are written)"
        ) from None
    spec = result.spec
    rows = {r["name"]: r for r in result.rows}
    labels = [
        _value_text(v) + ("\n(base)" if v == factor.base_value else "") for v in factor.values
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    width = 0.8 / len(spec.eval.methods)
    for j, method in enumerate(spec.eval.methods):
        acc = [rows[name][f"{method}_top1"] for name in factor.runs]
        acc = [math.nan if a is None else a for a in acc]
        if factor.numeric:
            ax.plot(factor.values, acc, marker="o", label=METHOD_NAMES[method])
            for x, y in zip(factor.values, acc, strict=True):
                if math.isnan(y):
                    continue
                ax.annotate(
                    f"{y:.1f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 5),
                    ha="center",
                    fontsize=8,
                )
        else:
            xs = [i + (j - (len(spec.eval.methods) - 1) / 2) * width for i in range(len(acc))]
            bars = ax.bar(xs, acc, width, label=METHOD_NAMES[method])
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ticks = factor.values if factor.numeric else list(range(len(factor.values)))
    ax.set_xticks(ticks, labels)
    ax.set_xlabel(factor.key)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    limit = f", {spec.eval.limit} images" if spec.eval.limit else ""
    ax.set_title(f"{spec.name}: {factor.key} (eval on {spec.eval.data}{limit})", fontsize=9)
    from .curve import save_figure

    return save_figure(fig, result.output / f"{re.sub(r'[^A-Za-z0-9._-]', '_', factor.key)}.png")


def format_summary(result: AblationResult) -> str:
    """What `mae ablate` prints at the end: the counts, the tables, the files."""
    c = result.counts
    lines = [
        f"{len(result.rows)} runs in {result.wall_s:.0f} s: {c['trained']} trained, "
        f"{c['resumed']} resumed, {c['skipped']} skipped (finished); {c['evaluated']} "
        f"evaluated, {c['cached']} evaluations cached",
        "",
        format_markdown(result),
        "",
        *(f"wrote {p}" for p in result.files),
    ]
    if result.note:
        lines.append(f"no plots: {result.note}")
    return "\n".join(lines)
