"""The private parts of llama-cpp-python that ``longwriter.llm.llama_server`` replaces or calls, checked without a
model (well under a second).

``llama_server`` wraps ``Llama._init_sampler``, ``Llama.generate``, ``Llama.save_state`` and ``Llama.load_state``,
stands its own sampler in for ``_internals.LlamaSampler`` and reads ``_internals.LlamaTokenDataArray``,
``LlamaGrammar._grammar`` / ``_root`` and llama.cpp's sampler functions. None of that is public API: a release
that renames, removes or re-signs one would break the embedded server at run time, inside a stage. Each test
here fails first, naming what changed. After a version bump, check each name, then update ``PINNED``.
"""

from __future__ import annotations

import ast
import ctypes
import inspect
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from llama_cpp import _internals, llama_grammar  # noqa: E402
from llama_cpp import llama as llama_module  # noqa: E402

from longwriter.llm import llama_server  # noqa: E402  (its own imports are the first check)

PINNED = "0.3.36"
Llama = llama_module.Llama
ROOT = Path(__file__).resolve().parents[1]


def _attribute(owner: object, name: str) -> object:
    assert hasattr(owner, name), f"llama-cpp-python {llama_cpp.__version__}: {getattr(owner, '__name__', owner)}" \
                                 f".{name} is gone; longwriter.llm.llama_server uses it"
    return getattr(owner, name)


def _assigned_in_init(cls: type, names: list[str]) -> None:
    """Instance attributes: each must still be assigned in ``cls.__init__`` (no model is loaded to look)."""
    source = inspect.getsource(cls.__init__)
    for name in names:
        assert re.search(rf"self\.{name}\s*(:[^=]*)?=", source), \
            f"llama-cpp-python {llama_cpp.__version__}: {cls.__name__}.__init__ no longer sets self.{name}; " \
            f"longwriter.llm.llama_server uses it"


def _parameters(function: object, needed: list[str]) -> inspect.Signature:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    for name in needed:
        assert name in signature.parameters, \
            f"llama-cpp-python {llama_cpp.__version__}: {function.__qualname__}{signature} has no parameter " \
            f"{name!r}; longwriter.llm.llama_server's wrapper passes it"  # type: ignore[attr-defined]
    return signature


def _calls(method_name: str) -> list[ast.Call]:
    """Every ``self.<method_name>(...)`` call in llama_cpp/llama.py."""
    tree = ast.parse(Path(llama_module.__file__).read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method_name
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"]


def test_the_pinned_version() -> None:
    assert llama_cpp.__version__ == PINNED, (
        f"llama-cpp-python {llama_cpp.__version__} is installed; longwriter.llm.llama_server was checked against "
        f"{PINNED}. Check that the names below still mean what they did (and whether the release now samples with "
        f"the grammar lazily itself: see the module's docstring), then update PINNED and the locks")
    for lock in ("requirements/cpu.lock", "requirements/gpu.txt"):
        pins = re.findall(r"^llama-cpp-python==(\S+)", (ROOT / lock).read_text(encoding="utf-8"), re.MULTILINE)
        assert pins == [PINNED], f"{lock} pins llama-cpp-python {pins}, not {PINNED}"


def test_the_wrapped_methods_and_their_signatures() -> None:
    """The four wrapped methods exist, the originals kept by the module are the library's, and each takes what
    the wrapper passes on: ``_init_sampler(..., grammar=)``, ``generate(tokens, ..., reset=)``, ``save_state()``,
    ``load_state(state)``."""
    for name, original in (("_init_sampler", llama_server._ORIGINAL_INIT_SAMPLER),
                           ("generate", llama_server._ORIGINAL_GENERATE),
                           ("save_state", llama_server._ORIGINAL_SAVE_STATE),
                           ("load_state", llama_server._ORIGINAL_LOAD_STATE)):
        assert callable(_attribute(Llama, name))
        assert original.__qualname__ == f"Llama.{name}", f"llama_server kept {original.__qualname__} as Llama.{name}"
    init_sampler = _parameters(Llama._init_sampler, ["self", "grammar"])
    assert init_sampler.parameters["grammar"].default is None
    generate = _parameters(Llama.generate, ["self", "tokens", "reset"])
    assert list(generate.parameters)[:2] == ["self", "tokens"], f"Llama.generate{generate}: tokens is not first"
    assert generate.parameters["reset"].default is True
    assert list(_parameters(Llama.save_state, ["self"]).parameters) == ["self"]
    assert list(_parameters(Llama.load_state, ["self", "state"]).parameters) == ["self", "state"]


def test_callers_pass_what_the_wrappers_expect() -> None:
    """The wrappers take ``grammar`` and ``reset`` as keywords (``*args`` before them): a caller passing either
    positionally would hand it twice. Every call of the wrapped methods in llama.py passes only ``tokens`` (or
    ``state``) positionally."""
    for method, positional in (("_init_sampler", 0), ("generate", 1), ("save_state", 0), ("load_state", 1)):
        calls = _calls(method)
        assert calls, f"llama-cpp-python {llama_cpp.__version__}: llama.py no longer calls self.{method}(...)"
        for call in calls:
            assert len(call.args) <= positional and not any(isinstance(a, ast.Starred) for a in call.args), \
                f"llama.py line {call.lineno}: self.{method}(...) passes {len(call.args)} positional arguments"


def test_llama_uses_its_sampler_only_as_lazy_grammar_sampler_serves_it() -> None:
    """``LazyGrammarSampler`` stands in for the ``LlamaSampler`` that ``_init_sampler`` returns: every method
    ``Llama`` calls on ``self._sampler`` must be one it has, and ``sample`` must still be called as
    ``sample(ctx, idx)``."""
    source = inspect.getsource(Llama)
    used = set(re.findall(r"self\._sampler\.(\w+)", source))
    assert used, "Llama no longer calls self._sampler.<method>: how does it sample now?"
    missing = used - set(dir(llama_server.LazyGrammarSampler))
    assert not missing, f"Llama calls self._sampler.{sorted(missing)}, which LazyGrammarSampler lacks"
    assert "self._sampler.sample(self._ctx," in textwrap.dedent(inspect.getsource(Llama.sample)), \
        "Llama.sample no longer calls self._sampler.sample(self._ctx, idx)"
    sample = _parameters(_internals.LlamaSampler.sample, ["self", "ctx", "idx"])
    assert list(sample.parameters) == list(inspect.signature(llama_server.LazyGrammarSampler.sample).parameters)


def test_the_attributes_and_internals_it_reads() -> None:
    _assigned_in_init(Llama, ["_model", "_n_vocab", "_ctx", "_sampler", "n_batch", "n_tokens", "input_ids"])
    _attribute(Llama, "longest_token_prefix")
    assert Llama.longest_token_prefix([1, 2, 3], [1, 2, 4]) == 2
    # the original generate keeps a prefix of self._input_ids, the first n_tokens of input_ids: exact_prefix sets
    # n_tokens to what may be kept
    assert "self.input_ids[: self.n_tokens]" in inspect.getsource(Llama._input_ids.fget), \
        "Llama._input_ids is no longer input_ids[:n_tokens]"
    assert "self._input_ids" in inspect.getsource(Llama.generate), "Llama.generate no longer matches _input_ids"
    # the state save_state returns takes an extra attribute (exact_n)
    state = llama_module.LlamaState(input_ids=np.zeros(1, np.intc), scores=np.zeros((1, 1), np.single), n_tokens=0,
                                    llama_state=b"", llama_state_size=0, seed=0)
    state.exact_n = 64  # type: ignore[attr-defined]
    _assigned_in_init(_internals.LlamaModel, ["vocab"])
    _assigned_in_init(_internals.LlamaContext, ["ctx"])
    grammar = llama_grammar.LlamaGrammar.from_string('root ::= "yes"', verbose=False)
    assert _attribute(grammar, "_grammar") == 'root ::= "yes"' and isinstance(_attribute(grammar, "_root"), str)
    import llama_cpp.server.__main__ as server_main  # what llama_server.main runs once patched

    assert callable(_attribute(server_main, "main"))


def test_the_llama_cpp_functions_it_calls() -> None:
    """The C functions and structures, by name and arity (ctypes checks the types when called)."""
    for name, arity in (("llama_sampler_init_grammar", 3), ("llama_sampler_apply", 2), ("llama_sampler_accept", 2),
                        ("llama_sampler_free", 1), ("llama_get_logits_ith", 2)):
        function = _attribute(llama_cpp, name)
        assert len(function.argtypes) == arity, f"{name} takes {len(function.argtypes)} arguments, not {arity}"
    fields = [f[0] for f in _attribute(llama_cpp, "llama_token_data_array")._fields_]
    assert fields == ["data", "size", "selected", "sorted"], f"llama_token_data_array fields are {fields}"
    _attribute(llama_cpp, "llama_token_data_p")


def test_a_sampler_chain_over_a_token_data_array_without_a_model() -> None:
    """What ``LazyGrammarSampler`` does with them, less the grammar (which needs a vocabulary): a chain
    (``LlamaSampler.sampler``) applied to a ``LlamaTokenDataArray`` filled by ``copy_logits``, and to a
    hand-made ``llama_token_data_array`` over a slice (``_in_top``), selects the most likely token."""
    chain = _internals.LlamaSampler()
    try:
        chain.add_greedy()
        full = _internals.LlamaTokenDataArray(n_vocab=8)
        logits = np.array([0.0, 1.0, 5.0, 2.0, -1.0, 4.0, 3.0, 0.5], dtype=np.single)
        full.copy_logits(logits)
        llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(full.candidates))
        assert int(full.candidates_data.id[full.candidates.selected]) == 2

        top = np.zeros(3, dtype=full.candidates_data.dtype).view(np.recarray)
        top.id[:], top.logit[:], top.p[:] = [5, 6, 3], logits[[5, 6, 3]], 0.0
        array = llama_cpp.llama_token_data_array(data=top.ctypes.data_as(llama_cpp.llama_token_data_p), size=3,
                                                 selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(array))
        assert int(top.id[array.selected]) == 5
        chain.accept(5)
    finally:
        chain.close()
