"""The embedded server answers a seeded request with the same reply whatever it evaluated before: a stage
resumed after ``kill -9`` sends its requests in flight again, to a fresh server, and must get the replies an
uninterrupted run got (``longwriter.llm.llama_server.exact_prefix``)."""

from __future__ import annotations

import json
import urllib.request

from longwriter.llm.server import DEFAULT_ALIAS, embedded_server
from longwriter.llm.spec import ModelSpec

# a write-shaped prompt of more than one 512-token batch, so that a later request sharing its prefix keeps a
# batch of the KV state (and, without exact_prefix, evaluates only its last few tokens)
PLAN = "\n".join(f"{i}. How the lighthouse at cape {i} was built, kept and lit (about 120 words)" for i in range(1, 20))


def _messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"You are writing a long piece, one paragraph per step.\n\n## Plan\n{PLAN}"
                                        f"\n\n## Your task\nWrite paragraph {n}."}]


def _ask(base_url: str, messages: list[dict[str, str]], seed: int, temperature: float = 1.0) -> str:
    # write's sampling: temperature 1.0 and penalties, so any difference in the logits shows in the text
    body = json.dumps({"model": DEFAULT_ALIAS, "messages": messages, "temperature": temperature, "top_p": 0.95,
                       "frequency_penalty": 1.5, "presence_penalty": 1.5, "max_tokens": 24, "seed": seed}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def test_a_seeded_request_gets_the_same_reply_whatever_the_server_evaluated_before(tmp_path):
    target = _messages(3)
    with embedded_server(ModelSpec(n_ctx=2048), tmp_path) as url:
        fresh = _ask(url, target, seed=1)
        after = {}
        # shares all but its last few tokens (more than a batch): write's paragraph n after paragraph n-1
        _ask(url, _messages(2), seed=1)
        after["shared prefix"] = _ask(url, target, seed=1)
        # shares only the chat template's first tokens
        _ask(url, [{"role": "user", "content": "Name a colour."}], seed=1)
        after["unrelated"] = _ask(url, target, seed=1)
        # the same prompt with another seed, greedy: all of the prompt was evaluated before (a request sent
        # again on a rerun, or a re-ask with a new seed)
        _ask(url, target, seed=2, temperature=0.0)
        after["same prompt"] = _ask(url, target, seed=1)
    assert len(fresh.split()) > 5
    assert after == dict.fromkeys(after, fresh)
