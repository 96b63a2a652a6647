"""Stage ``nll``: does later text depend on earlier text? The cumulative average NLL by token position.

The paper's test of long outputs: score each long text with a reference causal LM and average the negative
log-likelihood of tokens 1..t for every position t. If later tokens are predicted better because of what came
before (a coherent whole), the curve keeps falling at later positions. To tell that apart from a length artefact,
the same texts are scored again with their paragraphs shuffled (seeded): the gap between the two curves is what the
order of the text explains.

A text longer than the scorer's context is scored in strided windows: each window holds ``window`` tokens, and
the next starts ``window // 2`` tokens later; every token is scored once, in the first window where it is not in
the overlap, so each token but those of the first window sees at least ``window // 2`` tokens of context.

Text sets are the AgentWrite answers and each evaluated model's LongBench-Write answers; texts with fewer than
``min_tokens`` tokens are left out (counted), and each set's curve runs to its shortest remaining text.

Every scored text is a row of the ``NllTexts`` table (``data/eval/nll.parquet``: set, text_id, tokens, and its mean
NLL as written and shuffled); every other text is one failures row (``instruction_id`` ``set/text_id``):
``too_short`` under ``min_tokens``, ``left_out`` past ``max_texts`` (the shortest of the long enough go).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.eval.segments import text_sets
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import write_csv, write_metrics
from longwriter.schemas import NllTexts, empty, write_checked


@dataclass(frozen=True)
class NllConfig:
    """The ``nll`` section."""

    # the reference LM: a checkpoint directory or a Hugging Face id (a long-context model on a GPU)
    model: str = "models/base"
    trust_remote_code: bool = False   # run the model's own code (transformers' trust_remote_code), e.g. GLM-4-9B
    min_tokens: int = 256             # the paper: outputs longer than 8,192 tokens
    window: int = 2048                # tokens per scoring window (at most the model's context)
    positions: tuple[int, ...] = field(default_factory=lambda: (32, 64, 128, 256))
    tail_fraction: float = 0.5        # the slope is fitted over this last share of the curve
    max_texts: int = 3                # per text set, the longest first
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_tokens < 2 or self.window < 4:
            raise ValueError("min_tokens must be >= 2 and window >= 4")
        if not 0 < self.tail_fraction <= 1:
            raise ValueError(f"tail_fraction must be in (0, 1], got {self.tail_fraction!r}")
        if self.max_texts < 1 or any(p < 1 for p in self.positions):
            raise ValueError("max_texts and positions must be positive")


def device_and_dtype(cuda_available: bool) -> tuple[str, Any]:
    """Where the reference LM scores and in which precision: a GPU in bf16 (a 9B model in fp32 would need 36 GB
    for its weights alone, and bf16 is what it was trained in), else the CPU in fp32 (bf16 matmuls on a CPU are
    slow and round more). Log-probabilities are taken in fp32 either way (``token_nll``)."""
    import torch

    return ("cuda", torch.bfloat16) if cuda_available else ("cpu", torch.float32)


def token_nll(model: Any, ids: list[int], window: int) -> list[float]:
    """The NLL (nats) of tokens 1..len(ids)-1 given those before them, in strided windows of ``window``."""
    import torch

    device = getattr(model, "device", None) or "cpu"
    stride = max(1, window // 2)
    out: list[float] = []
    start = 0
    with torch.inference_mode():
        while True:
            chunk = ids[start:start + window]
            logits = model(torch.tensor([chunk], device=device)).logits[0].float()
            targets = torch.tensor(chunk[1:], device=logits.device)[:, None]
            nll = -torch.log_softmax(logits[:-1], dim=-1).gather(1, targets)[:, 0]
            # tokens already scored in the previous window (the overlap) are skipped
            first_new = 0 if start == 0 else window - stride - 1
            out.extend(nll[first_new:].tolist())
            if start + window >= len(ids):
                return out
            start += stride


def cumulative_mean(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for i, v in enumerate(values, start=1):
        total += v
        out.append(total / i)
    return out


def tail_slope(curve: list[float], fraction: float) -> float | None:
    """Least-squares slope of the curve's last ``fraction``, in nats per 1,000 tokens."""
    n = len(curve)
    start = int(n * (1 - fraction))
    xs, ys = list(range(start, n)), curve[start:]
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var, 6)


def shuffled_paragraphs(text: str, seed: int) -> str:
    """``text`` with its paragraphs (split at blank lines, else at line breaks) in a seeded random order."""
    sep = "\n\n" if "\n\n" in text.strip() else "\n"
    paragraphs = [p for p in text.split(sep) if p.strip()]
    random.Random(seed).shuffle(paragraphs)
    return sep.join(paragraphs)


def _mean_curve(curves: list[list[float]]) -> list[float]:
    length = min(len(c) for c in curves)
    return [sum(c[i] for c in curves) / len(curves) for i in range(length)]


def set_curves(model: Any, tokenizer: Any, texts: list[str], cfg: NllConfig,
               ids: list[str] | None = None) -> dict[str, Any]:
    """One text set's mean cumulative-NLL curves (original and shuffled) and its metrics; and per text (by its id in
    ``ids``, else its position): ``scored`` (text_id, tokens, nll_mean, nll_mean_shuffled), ``short`` and
    ``left_out`` (text_id, tokens)."""
    text_ids = ids if ids is not None else [str(i) for i in range(len(texts))]
    encoded = [(i, t, tokenizer(t, add_special_tokens=False)["input_ids"])
               for i, t in zip(text_ids, texts, strict=True)]
    eligible = sorted((e for e in encoded if len(e[2]) >= cfg.min_tokens), key=lambda e: -len(e[2]))
    long = eligible[:cfg.max_texts]
    # every text is counted once: scored, too short, or long enough but past max_texts (the shortest go)
    result: dict[str, Any] = {"texts": len(long), "short": len(encoded) - len(eligible),
                              "left_out_by_max_texts": len(eligible) - len(long)}
    curves: dict[str, list[float]] = {}
    means: dict[str, list[float]] = {}
    for kind in ("original", "shuffled"):
        per_text = []
        for i, (_, text, tokens) in enumerate(long):
            if kind == "shuffled":
                tokens = tokenizer(shuffled_paragraphs(text, cfg.seed + i), add_special_tokens=False)["input_ids"]
            per_text.append(cumulative_mean(token_nll(model, tokens, cfg.window)))
        curves[kind] = _mean_curve(per_text) if per_text else []
        means[kind] = [c[-1] for c in per_text]
        curve = curves[kind]
        result[kind] = {
            "tokens": len(curve),
            "nll_at": {str(p): round(curve[p - 1], 4) for p in cfg.positions if p <= len(curve)},
            "tail_slope_per_1k": tail_slope(curve, cfg.tail_fraction) if curve else None,
        }
    return {"metrics": result, "curves": curves,
            "scored": [(i, len(t), m, s) for (i, _, t), m, s in zip(long, means["original"], means["shuffled"],
                                                                     strict=True)],
            "short": [(i, len(t)) for i, _, t in encoded if len(t) < cfg.min_tokens],
            "left_out": [(i, len(t)) for i, _, t in eligible[cfg.max_texts:]]}


def run_nll(cfg: NllConfig, samples_path: str | Path, answers_path: str | Path, output_path: str | Path,
            metrics_path: str | Path, plot_path: str | Path, failures_path: str | Path, plot_every: int = 16,
            timings: str | Path | None = None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype(torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code
                                                 ).to(device).eval()
    window = min(cfg.window, getattr(model.config, "max_position_embeddings", None) or cfg.window)
    cfg = dataclasses.replace(cfg, window=window)
    sets, rows, texts, failure_rows = {}, [], [], []
    for name, set_texts in text_sets(samples_path, answers_path).items():
        scored = set_curves(model, tokenizer, [text for _, _, text in set_texts], cfg,
                            ids=[text_id for text_id, _, _ in set_texts])
        sets[name] = scored["metrics"]
        for kind, curve in scored["curves"].items():
            rows += [{"model": f"{name} ({kind})", "position": i + 1, "cumulative_nll": round(v, 5)}
                     for i, v in enumerate(curve) if (i + 1) % plot_every == 0 or i + 1 == len(curve)]
        texts += [{"set": name, "text_id": i, "tokens": n, "nll_mean": m, "nll_mean_shuffled": s}
                  for i, n, m, s in scored["scored"]]
        failure_rows += [failure_row("nll", Reason.TOO_SHORT, f"{n} tokens, fewer than nll.min_tokens "
                                     f"({cfg.min_tokens})", instruction_id=f"{name}/{i}")
                         for i, n in scored["short"]]
        failure_rows += [failure_row("nll", Reason.LEFT_OUT, f"{n} tokens: past nll.max_texts ({cfg.max_texts}), "
                                     f"the set's {cfg.max_texts} longest texts are scored",
                                     instruction_id=f"{name}/{i}")
                         for i, n in scored["left_out"]]
    result = {"model": cfg.model, "window": window, "min_tokens": cfg.min_tokens, "sets": sets,
              "failures": reason_counts(failure_rows)}
    write_checked(pl.DataFrame(texts, schema=empty(NllTexts).schema), NllTexts, output_path)
    write_failures(failure_rows, failures_path)
    write_csv(pl.DataFrame(rows, schema={"model": pl.Utf8, "position": pl.Int64, "cumulative_nll": pl.Float64}),
              plot_path)
    write_metrics(result, metrics_path, timings)
    return result
