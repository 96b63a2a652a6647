"""The one-command evaluation (issue 30): evaluation/dvc.yaml run as a user runs it, with no edit of any dvc.yaml.

A throwaway git + DVC repo holds the project's code, the evaluation pipeline and nothing else. The user's files
come in as a user brings them, with ``dvc import-url`` (here of local files: the public release's URLs need the
internet) into evaluation/imports/: a LongWrite-Ruler file, a LongBench-Write file, its English half and a saved
answers file. Then one ``dvc exp run -S`` from evaluation/ names the model (``provider: answers``) and the files;
the embedded model judges. The results are the stages' real metrics.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def _run(args: list[str], cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("evaluation") / "repo"
    repo.mkdir()
    for name in ("longwriter", "stages", "evaluation"):
        shutil.copytree(ROOT / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__", "out", "metrics", "plots", "dvc.lock"))
    for name in ("dvc.yaml", "params.yaml"):  # the main pipeline beside it, as in the project (not run here)
        shutil.copy(ROOT / name, repo / name)
    (repo / ".gitignore").write_text(".llm-cache/\n/evaluation/out/\n")
    _run(["git", "init", "-q"], repo)
    _dvc("init", "-q", cwd=repo)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots", dirs_exist_ok=True)
    # the user's files, as the docs import the public ones
    english = repo.parent / "longbench_write_en.jsonl"
    english.write_text((FIXTURES / "tiny_longbench.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n")
    saved = repo.parent / "paper_answers.jsonl"
    prompts = [json.loads(line)["prompt"] for name in ("tiny_ruler.jsonl", "tiny_longbench.jsonl")
               for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]
    saved.write_text("".join(json.dumps({"prompt": p, "answer": "The sea is wide and deep. " * (10 + 5 * i)},
                                        ensure_ascii=False) + "\n" for i, p in enumerate(prompts)),
                     encoding="utf-8")
    reference = repo.parent / "reference_answers.jsonl"  # Arena-Write's fixed references, for compare.reference
    reference.write_text("".join(json.dumps({"prompt": p, "answer": "Waves. " * (30 + 7 * i)}, ensure_ascii=False)
                                 + "\n" for i, p in enumerate(prompts)), encoding="utf-8")
    for source, name in ((FIXTURES / "tiny_ruler.jsonl", "longwrite_ruler.jsonl"),
                         (FIXTURES / "tiny_longbench.jsonl", "longbench_write.jsonl"),
                         (english, "longbench_write_en.jsonl"), (saved, "paper_answers.jsonl"),
                         (reference, "reference_answers.jsonl")):
        _dvc("import-url", str(source), f"evaluation/imports/{name}", cwd=repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "evaluation"], repo)
    return repo


def test_one_command_evaluates_saved_answers_with_the_embedded_judge(repo: Path) -> None:
    dvc_yaml = (repo / "evaluation" / "dvc.yaml").read_text()
    _dvc("exp", "run",
         "-S", "eval.models=[{name: paper, spec: {provider: answers, path: evaluation/imports/paper_answers.jsonl}},"
               " {name: reference, spec: {provider: answers, path: evaluation/imports/reference_answers.jsonl}}]",
         "-S", "compare.reference=reference",
         "-S", "ruler.input=evaluation/imports/longwrite_ruler.jsonl", "-S", "ruler.lengths=[100, 300]",
         "-S", "ruler.per_length=null",
         "-S", "longbench.input=evaluation/imports/longbench_write.jsonl",
         "-S", "longbench.en_file=evaluation/imports/longbench_write_en.jsonl",
         "-S", "judge.sampling={temperature: 0.0, top_p: 1.0, max_tokens: 256, seed: 0}",
         "-S", "judge.max_attempts=2",
         cwd=repo / "evaluation")
    assert (repo / "evaluation" / "dvc.yaml").read_text() == dvc_yaml  # no edit of the pipeline
    metrics = repo / "evaluation" / "metrics"
    ruler = json.loads((metrics / "ruler.json").read_text())
    assert ruler["paper"]["answers"] == 4 and ruler["paper"]["failed"] == 0
    assert ruler["paper"]["mean_words"] != ruler["reference"]["mean_words"]
    assert ruler["paper"]["llm"]["sent_calls"] == 0  # saved answers: nothing generated
    longbench = json.loads((metrics / "longbench.json").read_text())
    paper = longbench["paper"]
    assert paper["requests"] == 2 and paper["answers"] == 2 and paper["judged"] + paper["judge_failed"] == 2
    # the English half decides the languages: one request each
    assert {lang: m["requests"] for lang, m in paper["lang"].items()} == {"en": 1, "zh": 1}
    # Elo against the references: the reference is 1000, paper is rated by its games against it, both orders
    compare = json.loads((metrics / "compare.json").read_text())
    assert compare["pairs"] == [["paper", "reference"]] and compare["elo"]["anchor"] == "reference"
    assert compare["paper_vs_reference"]["judged"] + compare["paper_vs_reference"]["failed"] == 2
    ratings = compare["elo"]["ratings"]
    assert ratings["reference"]["elo"] in (1000.0, None) and ratings["paper"]["games"] in (0, 2, 4)
    # a param pointing at a file of evaluation/imports/ is tracked: the experiment ran from a clean status
    status = json.loads(_dvc("status", "--json", "evaluation/dvc.yaml", cwd=repo) or "{}")
    assert status == {}, status


def test_an_edited_imported_file_reruns_the_stages(repo: Path) -> None:
    params = yaml.safe_load((repo / "evaluation" / "params.yaml").read_text())
    assert params["eval"]["models"][0]["name"] == "paper"  # the experiment's params applied to the workspace
    answers = repo / "evaluation" / "imports" / "paper_answers.jsonl"
    answers.write_text(answers.read_text(encoding="utf-8") + json.dumps({"prompt": "new", "answer": "x"}) + "\n",
                       encoding="utf-8")
    stale = json.loads(_dvc("status", "--json", "evaluation/dvc.yaml", cwd=repo) or "{}")
    assert {"evaluation/dvc.yaml:ruler", "evaluation/dvc.yaml:longbench_answer"} <= set(stale) or \
        {"ruler", "longbench_answer"} <= set(stale), stale
