"""vLLM where it serves, without a GPU: the server's command line from a model spec, the cache identity and the
structured output mode it resolves to, the start timeout reaching it, the server dying with its stage (a stand-in
child through the same launcher), GRPO's vLLM arguments to TRL, nll's device and precision, and
trust_remote_code reaching transformers' loaders."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from longwriter.config import build, read_params, section
from longwriter.errors import LongwriterError
from longwriter.llm import ClientSettings, ModelSpec, open_endpoint
from longwriter.llm import local as local_mod
from longwriter.llm.local import checkpoint_identity, spawn_server, stop_server, vllm_command, vllm_server
from longwriter.train.grpo import GRPOSettings

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and /proc are Linux's")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A directory that passes for a checkpoint until something loads it (open_endpoint only hashes it)."""
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def _local(path: Path, **kw: Any) -> ModelSpec:
    return ModelSpec(provider="local", path=str(path), **kw)


# ------------------------------------------------------------------------------------- the command line


def test_the_vllm_command_carries_every_setting_of_the_spec(checkpoint: Path) -> None:
    spec = _local(checkpoint, vllm_tensor_parallel_size=4, vllm_max_model_length=32768,
                  vllm_gpu_memory_utilization=0.85, trust_remote_code=True)
    assert vllm_command(checkpoint, "sft", 12345, spec) == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
        "--served-model-name", "sft", "--host", "127.0.0.1", "--port", "12345",
        "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.85", "--max-model-len", "32768",
        "--trust-remote-code"]


def test_the_default_spec_leaves_the_context_and_remote_code_to_vllm(checkpoint: Path) -> None:
    cmd = vllm_command(checkpoint, "local", 1, _local(checkpoint))
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--max-model-len" not in cmd and "--trust-remote-code" not in cmd


@pytest.mark.parametrize(("field", "value"), [("vllm_tensor_parallel_size", 0), ("vllm_tensor_parallel_size", 1.5),
                                              ("vllm_max_model_length", 100), ("vllm_max_model_length", True),
                                              ("vllm_gpu_memory_utilization", 0), ("vllm_gpu_memory_utilization", 1.2)])
def test_vllm_settings_out_of_range_are_refused(checkpoint: Path, field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        _local(checkpoint, **{field: value})


def test_the_served_context_caps_long_generations(checkpoint: Path) -> None:
    assert _local(checkpoint).context_tokens() is None
    assert _local(checkpoint, vllm_max_model_length=8192).context_tokens() == 8192
    assert _local(checkpoint, vllm_max_model_length=8192, context_window=4096).context_tokens() == 4096


# ----------------------------------------------------------------- open_endpoint: identity, mode, start


def test_structured_output_is_json_schema_on_both_engines(checkpoint: Path) -> None:
    # vLLM and llama-server both decode response_format json_schema under its grammar
    assert _local(checkpoint).resolved_structured_output() == "json_schema"
    assert _local(checkpoint, structured_output="json_object").resolved_structured_output() == "json_object"


def _identity_and_mode(spec: ModelSpec, tmp_path: Path) -> tuple[str, str]:
    with open_endpoint(spec, ClientSettings(cache_dir=str(tmp_path / "cache"))) as endpoint:
        return endpoint.identity, endpoint.structured_output


def test_the_endpoint_follows_the_backend(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _local(checkpoint)
    sized = _local(checkpoint, vllm_max_model_length=16384)
    elsewhere = _local(checkpoint, vllm_tensor_parallel_size=8, vllm_gpu_memory_utilization=0.5,
                       trust_remote_code=True)
    monkeypatch.setattr(local_mod, "use_vllm", lambda: False)
    on_cpu, mode = _identity_and_mode(base, tmp_path)
    assert mode == "json_schema"
    assert _identity_and_mode(sized, tmp_path)[0] == on_cpu  # llama-server ignores vLLM's context
    monkeypatch.setattr(local_mod, "use_vllm", lambda: True)
    plain, mode = _identity_and_mode(base, tmp_path)
    assert mode == "json_schema"
    # the same weights, but another engine and precision (llama.cpp's F16 GGUF, vLLM's checkpoint dtype) answer
    assert plain == f"local:{checkpoint_identity(str(checkpoint))}" and on_cpu.startswith(plain + ":llama.cpp-")
    # the served context decides which requests are refused; the GPU count and memory share change no answer
    assert _identity_and_mode(sized, tmp_path)[0] == f"{plain}:max_model_length-16384"
    assert _identity_and_mode(elsewhere, tmp_path)[0] == plain


def test_vllm_gets_the_spec_and_the_start_timeout(checkpoint: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def fake_vllm_server(path: Path, alias: str, spec: ModelSpec, log_dir: Path, start_timeout_s: float
                         ) -> Iterator[str]:
        seen.update(path=path, alias=alias, spec=spec, timeout=start_timeout_s)
        yield "http://127.0.0.1:9/v1"

    monkeypatch.setattr(local_mod, "use_vllm", lambda: True)
    monkeypatch.setattr(local_mod, "vllm_server", fake_vllm_server)
    spec = _local(checkpoint, model="sft", vllm_tensor_parallel_size=2)
    settings = ClientSettings(cache_dir=str(tmp_path / "cache"), server_start_timeout_s=1234.0)
    with open_endpoint(spec, settings) as endpoint:
        assert endpoint.start is not None and endpoint.start() == "http://127.0.0.1:9/v1"
    assert seen == {"path": checkpoint, "alias": "sft", "spec": spec, "timeout": 1234.0}


def test_the_start_timeout_default_allows_a_cold_start_of_a_9b_model() -> None:
    # weights read, torch.compile and CUDA graph capture: minutes; 180 s stopped stages whose server was starting
    assert ClientSettings().server_start_timeout_s >= 600


def test_a_vllm_server_that_exits_is_reported_at_once_with_its_log(checkpoint: Path, tmp_path: Path) -> None:
    # without vLLM installed the real command exits at once (no module named vllm): reported, not waited for
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: the command would really start it")
    started = time.monotonic()
    with pytest.raises(LongwriterError, match=r"exited with code 1 before answering(.|\n)*No module named 'vllm'"), \
            vllm_server(checkpoint, "local", _local(checkpoint), tmp_path, start_timeout_s=600):
        pass
    assert time.monotonic() - started < 60


# ------------------------------------------------------------------------- the server dies with its stage


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _gone(pid: int, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@linux_only
def test_a_server_child_dies_when_its_stage_is_killed(tmp_path: Path) -> None:
    """The stage SIGKILLed (no cleanup runs): the kernel's parent-death signal still stops the child."""
    stage = ("import sys, time\n"
             "from longwriter.llm.local import spawn_server\n"
             "proc = spawn_server(['sleep', '300'], open(sys.argv[1], 'ab'))\n"
             "print(proc.pid, flush=True)\n"
             "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", stage, str(tmp_path / "server.log")], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        assert os.getpgid(child) == child  # its own process group, apart from the stage's
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone(child), "the server child outlived its killed stage"
    finally:
        parent.kill()
        parent.wait()


@linux_only
def test_stopping_a_server_stops_its_whole_process_group(tmp_path: Path) -> None:
    """What the server started (vLLM's engine core, its tensor-parallel workers) goes with it."""
    log_path = tmp_path / "server.log"
    with log_path.open("ab") as log:
        proc = spawn_server(["sh", "-c", "sleep 300 & echo $!; wait"], log)
    try:
        deadline = time.monotonic() + 10
        while not log_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(log_path.read_text().split()[0])
        assert _alive(grandchild) and os.getpgid(grandchild) == proc.pid
        stop_server(proc, grace_s=5)
        assert proc.returncode is not None
        assert _gone(grandchild), "the server's own child outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------------- GRPO


def test_grpo_passes_its_vllm_settings_to_trl(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    cfg = GRPOSettings(use_vllm=True, max_completion_length=4096, overlong_buffer=512, vllm_max_model_length=5120,
                       vllm_tensor_parallel_size=2, vllm_gpu_memory_utilization=0.4)
    assert cfg.vllm_kwargs() == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4,
                                 "vllm_max_model_length": 5120, "vllm_tensor_parallel_size": 2}
    # TRL's own class takes them (bf16 off: TRL's default, which a CPU refuses)
    args = trl.GRPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, **cfg.vllm_kwargs())
    assert (args.use_vllm, args.vllm_mode) == (True, "colocate")
    assert (args.vllm_max_model_length, args.vllm_tensor_parallel_size, args.vllm_gpu_memory_utilization) \
        == (5120, 2, 0.4)
    # the defaults: TRL's own (the model config's context, one GPU per engine), vLLM off
    default = GRPOSettings().vllm_kwargs()
    assert default["use_vllm"] is False and default["vllm_max_model_length"] is None
    assert default["vllm_tensor_parallel_size"] == 1


@pytest.mark.parametrize(("kw", "match"), [
    ({"vllm_max_model_length": 384}, "vllm_max_model_length"),   # no room for a prompt beside 384 completion tokens
    ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size"),
    ({"vllm_gpu_memory_utilization": 0.0}, "vllm_gpu_memory_utilization")])
def test_grpo_vllm_settings_out_of_range_are_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GRPOSettings(**kw)


def test_the_gpu_recipe_sizes_vllm_for_a_prompt_and_a_whole_completion() -> None:
    recipe = read_params(ROOT / "configs/params/grpo-gpu.yaml")
    cfg = build(GRPOSettings, section(recipe, "grpo"), "grpo-gpu.yaml:grpo")
    assert cfg.use_vllm and cfg.vllm_max_model_length is not None
    assert cfg.vllm_max_model_length >= cfg.max_completion_length + 512
    assert cfg.vllm_max_model_length < 131_072 // 4  # far below Llama-3.1's own, which the KV cache cannot hold


# ------------------------------------------------------------------------------------------------ nll


def test_nll_scores_on_the_gpu_in_bf16_and_on_the_cpu_in_fp32() -> None:
    torch = pytest.importorskip("torch")
    from longwriter.eval.nll import device_and_dtype

    assert device_and_dtype(True) == ("cuda", torch.bfloat16)
    assert device_and_dtype(False) == ("cpu", torch.float32)


class _Loaded(Exception):
    """Raised by a stand-in loader once it has recorded its arguments: the rest of the stage is not under test."""


def test_nll_passes_trust_remote_code_and_its_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from longwriter.eval.nll import NllConfig, device_and_dtype, run_nll

    calls: dict[str, dict[str, Any]] = {}

    def tokenizer(name: str, **kw: Any) -> object:
        calls["tokenizer"] = {"name": name, **kw}
        return object()

    def model(name: str, **kw: Any) -> object:
        calls["model"] = {"name": name, **kw}
        raise _Loaded

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    with pytest.raises(_Loaded):
        run_nll(NllConfig(model="THUDM/glm-4-9b", trust_remote_code=True), tmp_path / "s", tmp_path / "a",
                tmp_path / "n.parquet", tmp_path / "m.json", tmp_path / "p.csv", tmp_path / "f.parquet")
    assert calls["tokenizer"] == {"name": "THUDM/glm-4-9b", "trust_remote_code": True}
    assert calls["model"] == {"name": "THUDM/glm-4-9b", "trust_remote_code": True,
                              "dtype": device_and_dtype(torch.cuda.is_available())[1]}


def test_nll_config_takes_trust_remote_code_from_params() -> None:
    from longwriter.eval.nll import NllConfig

    assert build(NllConfig, {"trust_remote_code": True}, "params.yaml:nll").trust_remote_code is True
    assert NllConfig().trust_remote_code is False

