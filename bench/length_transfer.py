"""The paper's length experiment, reproduced: does a model's maximum output length follow the longest outputs in its
SFT data? (GLM-4-9B trained on sets capped at 500 / 1,000 / 2,000 words reached about 600 / 900 / 1,800 words.)

\b
    python bench/length_transfer.py              # the laptop recipe, three conditions (42 minutes on 2 cores,
                                                 # bench/results/length_transfer.json: seconds)
    python bench/length_transfer.py --dry-run    # the commands; the recipe applied and checked, the experiments
                                                 # queued and removed again, nothing trained (~30 s)
    python bench/length_transfer.py --keep /tmp/lt            # keep the clone (its DVC experiments, caches)
    python bench/length_transfer.py --collect /tmp/lt         # results again from a kept clone, nothing run
    python bench/length_transfer.py --recipe configs/params/length-transfer-paper.yaml   # a GPU node

Clones this repository's HEAD (committed files only, as bench/default_run.py does) into a temporary directory and
deep-merges the recipe (``configs/params/length-transfer.yaml``, an overlay of params.yaml sections) into the
clone's params.yaml, then checks every section builds (a misspelt key fails here, not an hour later) and commits it
there. The recipe's ``mix.max_output_words`` is the largest condition M; the conditions are M/4, M/2 and M (the
paper's ratio 1:2:4; ``--max-words`` sets them). Then, in the clone:

\b
    dvc repro ruler                         # the baseline: AgentWrite data, base, general, mix (max words M), sft,
                                            # dpo_pairs, dpo, grpo (the recipe shrinks the last three) and ruler
    git add -A && git commit                # the baseline DVC experiments start from
    dvc exp run --queue -s -n lt-<X> -S mix.max_output_words=<X> mix sft ruler     # for X in the conditions
    dvc queue start -j 1                    # one worker (the trainer and the ruler use every core)
    dvc queue status                        # polled until no experiment is queued or running
    dvc exp show --json                     # each experiment's params and metrics

Why ``-s mix sft ruler``: the ruler stage depends on every checkpoint ``eval.models`` may name, models/dpo and
models/grpo included, and both descend from models/sft, so ``dvc exp run ruler`` would retrain dpo_pairs, dpo and
grpo in every experiment. With ``-s`` (``--single-item``) DVC runs only the named stages, in the order given (each
only if its deps or params changed), without planning their upstream; a queued experiment's workspace still gets
every upstream output checked out from the clone's cache (the executor checks the targets out with their deps), so
ruler finds the baseline's models/dpo and models/grpo (stale there, and unused: the recipe's eval.models names
base and sft). The order matters: ``-s ruler sft mix`` runs mix only, then finds sft and ruler unchanged. The condition
equal to the baseline's M changes nothing and reruns nothing: its experiment records the baseline's figures.
tests/test_length_transfer.py checks these semantics, and this script end to end, on throwaway repos of trivial
stages (``--run-slow``).

Results: bench/results/length_transfer.json (per condition: the max words param; long and general samples, tokens,
the longest answer's words and the samples left out in the SFT data, train + validation; the ruler's max output
length on the words produced and on the effective words, each with its censored flag, and the mean words per
length), plots/length_transfer.csv (rendered by ``dvc plots show`` from dvc.yaml's top-level ``plots``) and
plots/length_transfer.png: x = the SFT data's max words, y = the ruler's max output length, with y = x; a censored
value is a lower bound, marked "≥".
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import yaml
from common import ROOT, save_result, sigterm_as_exit, table
from default_run import timed_repro

RECIPE = "configs/params/length-transfer.yaml"
TARGETS = ("mix", "sft", "ruler")  # in pipeline order: -s runs them in the order given
NAME_PREFIX = "lt-"
PLOT_CSV = ROOT / "plots" / "length_transfer.csv"
PLOT_PNG = ROOT / "plots" / "length_transfer.png"
GIT_ID = ["-c", "user.name=length-transfer bench", "-c", "user.email=bench@localhost"]
POLL_S = 15.0  # between two `dvc queue status`


# --- the recipe -------------------------------------------------------------------------------------------------

def deep_merge(base: Any, overlay: Any) -> Any:
    """``overlay`` over ``base``: mappings merge key by key (recursively), anything else (a scalar, a list, a
    mapping over a non-mapping) replaces. Neither input is changed."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = deep_merge(base[key], value) if key in base else value
        return out
    return overlay


def new_keys(base: Any, overlay: Any, prefix: str = "") -> list[str]:
    """The dotted keys the overlay sets that ``base`` lacks (where a mapping merges into a mapping)."""
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return []
    out: list[str] = []
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        out += new_keys(base[key], value, path + ".") if key in base else [path]
    return out


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases (params.yaml's ``*embedded`` become plain copies)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_params(params: dict[str, Any]) -> str:
    return yaml.dump(params, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=120)


def apply_recipe(params_path: Path, recipe_path: Path) -> tuple[dict[str, Any], list[str]]:
    """Merge the recipe into the params file in place; the merged params and the keys params.yaml lacked."""
    base = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    overlay = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
    if not isinstance(overlay, dict):
        raise click.ClickException(f"{recipe_path}: a recipe is a mapping of params.yaml sections")
    merged = deep_merge(base, overlay)
    params_path.write_text(dump_params(merged), encoding="utf-8")
    return merged, new_keys(base, overlay)


def conditions(params: dict[str, Any], max_words: str | None) -> list[int]:
    """``--max-words`` (comma-separated), else M/4, M/2, M from the recipe's mix.max_output_words."""
    if max_words:
        values = sorted({int(v) for v in max_words.split(",") if v.strip()})
    else:
        top = (params.get("mix") or {}).get("max_output_words")
        if not isinstance(top, int) or top < 4:
            raise click.ClickException("the recipe sets no mix.max_output_words (the largest condition): "
                                       "set it, or pass --max-words")
        values = [top // 4, top // 2, top]
    if len(values) < 2 or values[0] < 1:
        raise click.ClickException(f"need two or more positive max words, got {values}")
    return values


# Every section builds with the dataclass its stage reads (tests/test_config.py's rule), in the clone's own code.
VALIDATE = r'''
import importlib, re
from pathlib import Path
from longwriter.config import build, read_params, section
params = read_params("params.yaml")
for script in sorted(Path("stages").glob("*.py")):
    for cls_name, key in re.findall(r'build\((\w+),\s*section\(params,\s*"(\w+)"', script.read_text()):
        cls = getattr(importlib.import_module(f"stages.{script.stem}"), cls_name)
        build(cls, section(params, key, "params.yaml"), f"params.yaml:{key}")
print("params.yaml: every section builds")
'''


# --- running ----------------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)  # the stages import the clone's longwriter (python -m from the clone's root)
    return env


def run(repo: Path, *args: str, check: bool = True, echo: bool = True) -> subprocess.CompletedProcess[str]:
    if echo:
        click.echo(f"$ {shlex.join(args)}", err=True)
    proc = subprocess.run(list(args), cwd=repo, env=_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise click.ClickException(f"{shlex.join(args)} failed ({proc.returncode}):\n"
                                   f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True, echo: bool = True) -> subprocess.CompletedProcess[str]:
    return run(repo, sys.executable, "-m", "dvc", *args, check=check, echo=echo)


def queue_command(x: int) -> list[str]:
    return ["dvc", "exp", "run", "--queue", "-s", "-n", f"{NAME_PREFIX}{x}", "-S", f"mix.max_output_words={x}",
            *TARGETS]


def commands(values: list[int], recipe: str) -> list[str]:
    """The commands the run makes in the clone, in order (what --dry-run prints)."""
    return ([f"git clone --no-local <this repository> <clone>  # then {recipe} merged into params.yaml, committed",
             "dvc repro ruler", "git add -A && git commit -m 'length transfer: baseline'"]
            + [shlex.join(queue_command(x)) for x in values]
            + ["dvc queue start -j 1", "dvc queue status  # until none is queued or running", "dvc exp show --json"])


def queue_states(status_text: str) -> dict[str, str]:
    """Experiment name -> status from ``dvc queue status``'s table (the name is the 2nd column, the status last)."""
    states: dict[str, str] = {}
    in_table = False
    for line in status_text.splitlines():
        words = line.split()
        if words[:2] == ["Task", "Name"]:
            in_table = True
        elif not words:
            in_table = False
        elif in_table and len(words) >= 3:
            states[words[1]] = words[-1]
    return states


def wait_for_queue(repo: Path, names: list[str], timeout_s: float) -> dict[str, str]:
    started, last = time.perf_counter(), None
    while True:
        states = {n: s for n, s in queue_states(dvc(repo, "queue", "status", echo=False).stdout).items()
                  if n in names}
        if states != last:
            click.echo(f"[{time.perf_counter() - started:7.0f} s] " + ", ".join(f"{n} {s}" for n, s in
                                                                         sorted(states.items())), err=True)
            last = states
        if states and not any(s in ("Queued", "Running") for s in states.values()):
            return states
        if time.perf_counter() - started > timeout_s:
            dvc(repo, "queue", "stop", "--kill", check=False)
            raise click.ClickException(f"the experiments ran past {timeout_s:.0f} s: {states}")
        time.sleep(POLL_S)


def commit_all(repo: Path, message: str) -> str:
    run(repo, "git", "add", "-A", echo=False)
    run(repo, "git", *GIT_ID, "commit", "-q", "--allow-empty", "-m", message)
    return run(repo, "git", "rev-parse", "HEAD", echo=False).stdout.strip()


# --- results ----------------------------------------------------------------------------------------------------

def _data(node: dict[str, Any] | None, path: str) -> dict[str, Any]:
    return ((node or {}).get(path) or {}).get("data") or {}


def experiments(show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Experiment name -> {rev, params, metrics} from ``dvc exp show --json`` (every baseline's experiments)."""
    out: dict[str, dict[str, Any]] = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                out[rev.get("name") or exp.get("name")] = {
                    "rev": data.get("rev") or rev.get("rev"), "params": _data(data.get("params"), "params.yaml"),
                    "metrics": {p: v.get("data") or {} for p, v in (data.get("metrics") or {}).items()},
                    "error": rev.get("error")}
    return out


def sft_data(mix: dict[str, Any]) -> dict[str, Any]:
    """The SFT data's figures from metrics/mix.json, train + validation."""
    splits = [mix.get(s) or {} for s in ("train", "validation")]

    def total(source: str, key: str) -> int:
        return sum(int((s.get(source) or {}).get(key) or 0) for s in splits)

    def most(source: str) -> int:
        return max((int(((s.get(source) or {}).get("words") or {}).get("max") or 0) for s in splits), default=0)

    return {"long_samples": total("long", "examples"), "general_samples": total("general", "examples"),
            "tokens": total("long", "tokens") + total("general", "tokens"), "long_tokens": total("long", "tokens"),
            "max_words": max(most("long"), most("general")), "long_max_words": most("long"),
            "general_max_words": most("general"), "left_out": mix.get("left_out") or {}}


RULER_KEYS = ("max_output_length", "max_output_length_censored", "max_output_length_effective",
              "max_output_length_effective_censored", "mean_words", "mean_effective_words", "truncated_share",
              "degenerate_share", "answers")


def condition(name: str, exp: dict[str, Any], model: str) -> dict[str, Any]:
    metrics = exp["metrics"]
    ruler = metrics.get("metrics/ruler.json") or {}
    sft = metrics.get("metrics/sft.json") or {}
    return {
        "max_output_words": (exp["params"].get("mix") or {}).get("max_output_words"),
        "experiment": name, "rev": exp["rev"],
        "sft_data": sft_data(metrics.get("metrics/mix.json") or {}),
        "sft": {k: sft.get(k) for k in ("steps", "train_tokens", "train_loss_first", "train_loss_last")},
        "ruler": {k: (ruler.get(model) or {}).get(k) for k in RULER_KEYS},
        # the other models eval.models lists (the recipe's base): the same in every condition
        "others": {m: {k: v.get(k) for k in RULER_KEYS} for m, v in sorted(ruler.items())
                   if m != model and isinstance(v, dict) and "max_output_length" in v},
    }


def collect(show: list[dict[str, Any]], names: list[str], model: str) -> list[dict[str, Any]]:
    """One condition per named experiment, by max words; a name without an experiment is an error."""
    found = experiments(show)
    missing = [n for n in names if n not in found]
    if missing:
        raise click.ClickException(f"no experiment {missing} in `dvc exp show` (failed? see `dvc queue logs NAME`)")
    return sorted((condition(n, found[n], model) for n in names), key=lambda c: c["max_output_words"] or 0)


def shown(value: Any, censored: Any) -> str:
    return "–" if value is None else (f"≥ {value}" if censored else str(value))


SERIES = (("produced", "max_output_length"), ("effective", "max_output_length_effective"))


def plot_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The figure's points: per condition, the trained model's max output length on the words produced and on the
    effective words (x = the max words param), and each reference model's (the same at every x: a flat line)."""
    model = result.get("model", "sft")
    rows = []
    for c in result["conditions"]:
        series = [(f"{model} {name}", c["ruler"], key) for name, key in SERIES]
        series += [(f"{other} produced", figures, "max_output_length") for other, figures in c["others"].items()]
        for label, figures, key in series:
            value, censored = figures.get(key), bool(figures.get(f"{key}_censored"))
            if value is not None:
                rows.append({"model": label, "max_words": c["max_output_words"], "max_output_length": value,
                             "censored": censored, "shown": shown(value, censored),
                             "data_max_words": c["sft_data"]["max_words"]})
    return rows


def write_csv(result: dict[str, Any], path: Path) -> None:
    import csv

    rows = plot_rows(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "max_words", "max_output_length", "censored", "shown",
                                               "data_max_words"])
        writer.writeheader()
        writer.writerows(rows)


def write_png(result: dict[str, Any], path: Path) -> None:
    """x = the SFT data's max words, y = the ruler's max output length (log 2 axes at the ruler's lengths), y = x
    dashed; a censored value is a lower bound: "≥ L" and an arrow up; 0 (not even the shortest length reached)
    sits below the shortest length."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows = plot_rows(result)
    xs = sorted({c["max_output_words"] for c in result["conditions"]})
    lengths = sorted({int(n) for n in (result.get("ruler") or {}).get("lengths") or []}
                     | {r["max_output_length"] for r in rows if r["max_output_length"]} | set(xs))
    floor = lengths[0] / 2

    def y(value: int) -> float:
        return value if value > 0 else floor

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        lo, hi = min(xs[0], lengths[0]) * 0.8, max(xs[-1], lengths[-1]) * 1.2
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="gray", linewidth=1,
                label="y = x: the max output = the data's max")
        labels = list(dict.fromkeys(r["model"] for r in rows))
        for i, label in enumerate(labels):
            mine = sorted((r for r in rows if r["model"] == label), key=lambda r: r["max_words"])
            reference = i >= len(SERIES)
            style = ({"linestyle": ":", "marker": None} if reference
                     else {"marker": "os"[i], "linestyle": "-"})
            line, = ax.plot([r["max_words"] for r in mine], [y(r["max_output_length"]) for r in mine],
                            label=label + (" (reference: not fine-tuned here)" if reference else ""), **style)
            for r in mine if not reference else mine[-1:]:
                if r["censored"]:  # a lower bound: an arrow up from the point
                    ax.annotate("", xy=(r["max_words"], y(r["max_output_length"]) * 1.35),
                                xytext=(r["max_words"], y(r["max_output_length"])),
                                arrowprops={"arrowstyle": "->", "color": line.get_color()})
                ax.annotate(r["shown"], (r["max_words"], y(r["max_output_length"])), textcoords="offset points",
                            xytext=(6, -12 if i % 2 else 6), fontsize="small", color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_yticks([floor, *lengths], ["0", *(str(n) for n in lengths)])
        ax.minorticks_off()
        ax.set_xlabel("max output words in the SFT data (mix.max_output_words)")
        ax.set_ylabel("LongWrite-Ruler max output length (words)")
        ax.set_title("Max output length vs the SFT data's longest output (≥: lower bound)", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def summary_table(result: dict[str, Any]) -> str:
    rows = []
    for c in result["conditions"]:
        d, r = c["sft_data"], c["ruler"]
        rows.append([c["max_output_words"], d["long_samples"], d["tokens"], d["max_words"],
                     shown(r.get("max_output_length"), r.get("max_output_length_censored")),
                     shown(r.get("max_output_length_effective"), r.get("max_output_length_effective_censored")),
                     json.dumps(r.get("mean_words") or {})])
    for other, r in (result["conditions"][0]["others"] if result["conditions"] else {}).items():
        rows.append([f"{other} (ref.)", "", "", "",
                     shown(r.get("max_output_length"), r.get("max_output_length_censored")),
                     shown(r.get("max_output_length_effective"), r.get("max_output_length_effective_censored")),
                     json.dumps(r.get("mean_words") or {})])
    return table(["max words", "long samples", "tokens", "data max", "ruler max", "effective", "mean words per L"],
                 rows)


def results_from(repo: Path, values: list[int], model: str) -> dict[str, Any]:
    show = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    ruler = params.get("ruler") or {}
    return {"conditions": collect(show, [f"{NAME_PREFIX}{x}" for x in values], model),
            "model": model,
            "ruler": {k: ruler.get(k) for k in ("input", "lengths", "per_length", "reach", "max_tokens")}}


def write_outputs(result: dict[str, Any], name: str) -> None:
    write_csv(result, PLOT_CSV)
    write_png(result, PLOT_PNG)
    click.echo(summary_table(result))
    click.echo(f"results: {save_result(name, result)}; figure: {PLOT_CSV.relative_to(ROOT)}, "
               f"{PLOT_PNG.relative_to(ROOT)}")


@click.command(help=__doc__)
@click.option("--recipe", default=RECIPE, show_default=True,
              help="The params overlay, a path in the clone (or an absolute path).")
@click.option("--max-words", default=None, help="Conditions, comma-separated (default: M/4, M/2, M of the recipe's "
                                                "mix.max_output_words).")
@click.option("--model", default="sft", show_default=True, help="The eval.models name of the trained checkpoint.")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), default=ROOT,
              help="The git repository to clone (its HEAD).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Clone into this (new) directory and keep it, instead of a temporary one.")
@click.option("--collect", "collect_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Only collect: the results of a clone kept by an earlier run.")
@click.option("--dry-run", is_flag=True, help="Print the commands; apply the recipe in a clone, check it, queue the "
                                              "experiments and remove them again; train nothing.")
@click.option("--timeout-min", default=150.0, show_default=True,
              help="Give up on the baseline or the queue after this.")
@click.option("--name", default="length_transfer", show_default=True, help="Results file bench/results/NAME.json.")
def main(recipe: str, max_words: str | None, model: str, source: Path, keep: Path | None, collect_dir: Path | None,
         dry_run: bool, timeout_min: float, name: str) -> None:
    if collect_dir is not None:
        params = yaml.safe_load((collect_dir / "params.yaml").read_text(encoding="utf-8"))
        values = conditions(params, max_words)
        # the clone's history: the cloned commit, the recipe's commit, the baseline's
        result = {"commit": run(collect_dir, "git", "rev-parse", "HEAD~2", echo=False).stdout.strip(),
                  "recipe": run(collect_dir, "git", "log", "-1", "--format=%s", "HEAD~1", echo=False).stdout.strip(),
                  **results_from(collect_dir, values, model)}
        write_outputs(result, name)
        return
    if keep is not None and keep.exists():
        raise click.ClickException(f"{keep} exists: --keep takes a new directory")
    commit = run(source, "git", "rev-parse", "HEAD", echo=False).stdout.strip()
    dirty = run(source, "git", "status", "--porcelain", "--untracked-files=no", echo=False).stdout.strip()
    if dirty:
        click.echo("WARNING: uncommitted changes are not part of the run (it clones HEAD)", err=True)
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="length-transfer-") as tmp:
        repo = keep if keep is not None else Path(tmp) / "repo"
        started = time.perf_counter()
        subprocess.run(["git", "clone", "-q", "--no-local", str(source), str(repo)], check=True)
        for cache in (repo / ".llm-cache", repo / ".dvc" / "cache"):
            shutil.rmtree(cache, ignore_errors=True)  # never in a clone; made sure of
        recipe_path = Path(recipe) if Path(recipe).is_absolute() else repo / recipe
        if not recipe_path.exists():
            raise click.ClickException(f"no recipe {recipe_path} (it is read from the clone: is it committed?)")
        params, added = apply_recipe(repo / "params.yaml", recipe_path)
        # one response cache for the baseline and every experiment (each runs in a workspace of its own under
        # .dvc/tmp/exps): the reference models' answers are paid once; llm.cache_dir is no stage's dependency
        params = deep_merge(params, {"llm": {"cache_dir": str(repo / ".llm-cache")}})
        (repo / "params.yaml").write_text(dump_params(params), encoding="utf-8")
        if added:
            click.echo(f"the recipe adds keys params.yaml lacks: {', '.join(added)}", err=True)
        values = conditions(params, max_words)
        run(repo, sys.executable, "-c", VALIDATE)
        commit_all(repo, f"length transfer: {recipe}")
        click.echo("\n".join(["commands (in the clone):", *(f"  {c}" for c in commands(values, recipe))]))
        names = [f"{NAME_PREFIX}{x}" for x in values]
        try:
            if dry_run:
                for x in values:
                    dvc(repo, *queue_command(x)[1:])
                states = queue_states(dvc(repo, "queue", "status").stdout)
                if sorted(n for n, s in states.items() if s == "Queued") != sorted(names):
                    raise click.ClickException(f"expected {names} queued, `dvc queue status` says {states}")
                dvc(repo, "queue", "remove", *names)
                click.echo(f"dry run: the recipe applies and builds; {', '.join(names)} queued and removed again")
                return
            baseline_s, starts, _ = timed_repro(repo, "ruler", timeout_s=timeout_min * 60)
            commit_all(repo, "length transfer: baseline")
            for x in values:
                dvc(repo, *queue_command(x)[1:])
            queue_started = time.perf_counter()
            dvc(repo, "queue", "start", "-j", "1")
            states = wait_for_queue(repo, names, timeout_min * 60)
            experiments_s = time.perf_counter() - queue_started
            failed = sorted(n for n in names if states.get(n) != "Success")
            for n in failed:
                click.echo(dvc(repo, "queue", "logs", n, check=False).stdout[-4000:], err=True)
            done = [x for x in values if f"{NAME_PREFIX}{x}" not in failed]
            if not done:
                raise click.ClickException(f"every experiment failed: {failed} (logs above; --keep to look into them)")
            result = {
                "commit": commit, "uncommitted_changes_left_out": bool(dirty), "recipe": recipe,
                "commands": commands(values, recipe), "failed": failed,
                "seconds": round(time.perf_counter() - started, 1), "baseline_seconds": round(baseline_s, 1),
                "baseline_stages": [s for s, _ in starts], "experiments_seconds": round(experiments_s, 1),
                **results_from(repo, done, model),
            }
        finally:
            if not dry_run:
                dvc(repo, "queue", "stop", "--kill", check=False, echo=False)
    write_outputs(result, name)
    if failed:  # the others' results are written: the figure lacks these conditions
        raise click.ClickException(f"experiments failed: {failed} (logs above; --keep to look into them)")


if __name__ == "__main__":
    main()
