"""The embedded server's entry point: llama-cpp-python's server, its grammar checked one token at a time.

llama-cpp-python (0.3.x) puts a response format's grammar into the sampler chain ahead of every other sampler,
so at each step the grammar is matched against the whole vocabulary (49,152 tokens for SmolLM2): a JSON-schema
reply decodes at about 40 tokens/s on 2 cores where a free one decodes at about 110, and the judge, the
planner and the selector all ask for JSON (bench/embedded_throughput.py, ``grammar``). llama.cpp's own server
samples the other way (common_sampler_sample): sample without the grammar, check the one token drawn
against it, and only when the grammar rejects it, apply the grammar to the whole vocabulary and sample again.
This module makes llama-cpp-python's server do the same, then runs it unchanged (``python -m
longwriter.llm.llama_server`` takes ``python -m llama_cpp.server``'s arguments).

Greedy decoding (temperature 0, the judge's) picks exactly the token it picked before: the most likely token
overall, when the grammar allows it, is the most likely allowed one. With temperature > 0, a token drawn from
the unconstrained distribution and allowed by the grammar is kept, as in llama.cpp's server.

Upstream: llama.cpp's rejection sampling is https://github.com/ggml-org/llama.cpp/pull/4306 (removed by #17937,
restored by https://github.com/ggml-org/llama.cpp/pull/18137 for its speed); grammar speed in general is
https://github.com/ggml-org/llama.cpp/issues/4218 (open). No llama-cpp-python release does it: 0.3.36, the
latest on PyPI, still adds the grammar to the chain (``LlamaSampler.add_grammar``); its
``add_grammar_lazy_patterns`` is a grammar that starts at a trigger, not this. This patch can go once a release's
``Llama`` samples the llama.cpp way. Until then ``tests/test_llama_patch.py`` fails, naming it, the moment a
release changes a private name or signature used here (the pinned version included).

It also makes a seeded request's reply independent of what the server evaluated before (``exact_prefix``).
llama-cpp-python keeps the KV state of the longest prefix a prompt shares with the last one (or with a state of
its RAM cache) and evaluates only the rest; but ggml's CPU kernels depend on how many tokens a batch holds
(flash attention, for one, takes a tiled kernel from 64 tokens on and one accumulating in half precision
below), so a position's keys and values, hence the logits, depend on the batch it was evaluated in, or on its
being generated one token at a time. The same prompt evaluated from another starting point gave logits up to
0.6 apart, and a stage resumed after ``kill -9`` other text than an uninterrupted one. Only whole batches of
``n_batch`` tokens that were evaluated as such from position 0 are kept: the rest of the prompt is then
evaluated in exactly the batches a fresh server would use.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import llama as llama_module
from llama_cpp._internals import LlamaContext, LlamaSampler, LlamaTokenDataArray

_ORIGINAL_INIT_SAMPLER = llama_module.Llama._init_sampler
_ORIGINAL_GENERATE = llama_module.Llama.generate
_ORIGINAL_SAVE_STATE = llama_module.Llama.save_state
_ORIGINAL_LOAD_STATE = llama_module.Llama.load_state
# a rejected token is looked for again among this many most likely tokens before the whole vocabulary
TOP = 256


class LazyGrammarSampler:
    """``sample(ctx, idx)`` like ``LlamaSampler``: the chain without the grammar first, the grammar checked on the
    token it drew, the grammar over the whole vocabulary only when that token is rejected."""

    def __init__(self, model: Any, n_vocab: int, chain: LlamaSampler, grammar: Any) -> None:
        self.chain, self.n_vocab = chain, n_vocab
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        self.full = LlamaTokenDataArray(n_vocab=n_vocab)
        self.top = np.zeros(TOP, dtype=self.full.candidates_data.dtype).view(np.recarray)
        self.top_array = llama_cpp.llama_token_data_array(
            data=self.top.ctypes.data_as(llama_cpp.llama_token_data_p), size=TOP, selected=-1, sorted=False)

    def _in_top(self, logits: np.ndarray, ids: np.ndarray) -> int | None:
        """The chain's token among ``ids`` (the most likely tokens) after the grammar, None if it allows none."""
        n = len(ids)
        self.top.id[:n], self.top.logit[:n], self.top.p[:n] = ids, logits[ids], 0.0
        self.top_array.size, self.top_array.selected, self.top_array.sorted = n, -1, False
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self.top_array))
        if np.isinf(self.top.logit[:n]).all():
            return None
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(self.top_array))
        return int(self.top.id[self.top_array.selected])

    def sample(self, ctx: LlamaContext, idx: int = -1) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        candidates = ctypes.byref(self.full.candidates)
        self.full.copy_logits(logits)
        llama_cpp.llama_sampler_apply(self.chain.sampler, candidates)
        token = int(self.full.candidates_data.id[self.full.candidates.selected])
        if self._in_top(logits, np.array([token], dtype=np.intc)) is None:
            # rejected: the grammar over the TOP most likely tokens, then over all of them only if it allows none
            # of those (the most likely allowed token, greedy's pick, is among them whenever any of them is
            # allowed)
            found = self._in_top(logits, np.argpartition(logits, -TOP)[-TOP:].astype(np.intc))
            if found is None:
                self.full.copy_logits(logits)
                llama_cpp.llama_sampler_apply(self.grammar, candidates)
                llama_cpp.llama_sampler_apply(self.chain.sampler, candidates)
                found = int(self.full.candidates_data.id[self.full.candidates.selected])
            token = found
        llama_cpp.llama_sampler_accept(self.grammar, token)
        self.chain.accept(token)
        return token

    def close(self) -> None:
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None
        self.chain.close()

    def __del__(self) -> None:
        self.close()


def _init_sampler(self: Any, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
    chain = _ORIGINAL_INIT_SAMPLER(self, *args, grammar=None, **kwargs)
    if grammar is None:
        return chain
    return LazyGrammarSampler(self._model, self._n_vocab, chain, grammar)


def exact_prefix(llama: Any, tokens: list[int]) -> int:
    """How many leading positions of the KV state to keep for a prompt of ``tokens``: whole ``n_batch`` batches
    that this prompt shares and that were evaluated as whole batches from position 0 (``_exact_n``, as a fresh
    server evaluates them), and fewer than all of ``tokens`` (the last batch is evaluated again for its logits)."""
    exact = min(getattr(llama, "_exact_n", 0), llama.n_tokens, len(tokens) - 1)
    shared = llama_module.Llama.longest_token_prefix(llama.input_ids[:exact].tolist(), tokens)
    # whole batches, not nothing: +0.9 s of prompt evaluation per sequential write call on 2 cores, nothing: +4.2 s
    return shared // llama.n_batch * llama.n_batch


def _generate(self: Any, tokens: Any, *args: Any, reset: bool = True, **kwargs: Any) -> Any:
    tokens = list(tokens)
    if reset:
        # the original generate keeps the prefix its tokens share with self.input_ids[:n_tokens]: exactly these
        # (0: it resets and evaluates the whole prompt)
        self.n_tokens = exact_prefix(self, tokens)
    self._exact_n = 0  # until the prompt is evaluated
    exact_after = len(tokens) // self.n_batch * self.n_batch if reset else 0
    for i, token in enumerate(_ORIGINAL_GENERATE(self, tokens, *args, reset=reset, **kwargs)):
        if i == 0:  # the prompt is evaluated; generated tokens are evaluated one at a time, never kept
            self._exact_n = exact_after
        yield token


def _save_state(self: Any) -> Any:
    state = _ORIGINAL_SAVE_STATE(self)
    state.exact_n = getattr(self, "_exact_n", 0)
    return state


def _load_state(self: Any, state: Any) -> None:
    _ORIGINAL_LOAD_STATE(self, state)
    self._exact_n = getattr(state, "exact_n", 0)


def install() -> None:
    """Make every ``Llama`` of this process sample with ``LazyGrammarSampler`` when given a grammar, and keep
    only the KV prefix that cannot change a reply (``exact_prefix``)."""
    llama_module.Llama._init_sampler = _init_sampler
    llama_module.Llama.generate = _generate
    llama_module.Llama.save_state = _save_state
    llama_module.Llama.load_state = _load_state


def main() -> None:
    from llama_cpp.server.__main__ import main as server_main

    install()
    server_main()


if __name__ == "__main__":
    main()
