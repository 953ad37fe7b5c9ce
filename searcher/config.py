"""Study files (YAML, DESIGN.md §5), validated with pydantic; every error names its key path.

Imports: errors, spaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

__all__ = [
    "StudyConfig", "ModelSection", "TaskSection", "DataSection", "DeviceSection", "GenerateSection", "BudgetSection",
    "SearchSection", "load_study_config", "format_error", "TASKS", "TASK_FIELDS", "SAMPLERS",
]

# the tasks and the fields each reads from a data file (searcher/problem/tasks.py implements them)
TASK_FIELDS = {
    "sentence-similarity": ("sentence1", "sentence2", "score"),
    "text-classification": ("text", "label"),
    "causal-lm": ("text",),
    "image-classification": ("image", "label"),
}
TASKS = tuple(TASK_FIELDS)
SAMPLERS = ("tpe", "nsga2", "gp", "random")
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "npz")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    name: str = Field("minilm-l6", description="local directory, hub id, the alias minilm-l6, recipe:<name>, "
                      "a .gguf file or the alias smollm2-135m")


class TaskSection(_Section):
    type: Literal[TASKS] = "sentence-similarity"
    max_length: int = Field(128, ge=8, le=4096, description="tokenizer truncation length for quality")
    stride: int | None = Field(None, ge=1, description="causal-lm: score the text as one token stream in windows "
                               "of max_length tokens advancing by stride (sliding-window perplexity); default: "
                               "each row on its own")


class DataSection(_Section):
    format: Literal[FORMATS] | None = Field(None, description="file format; default from the extension")
    validation: str | None = Field(None, description="validation file (relative to the study file) or a built-in "
                                   "source such as sklearn:digits:validation")
    calibration: str | None = Field(None, description="calibration/training file for Fisher and distillation")
    test: str | None = Field(None, description="test file: scored only by report and finish, never used to "
                             "select, tune or stop anything")
    distill: str | None = Field(None, description="distillation corpus for `slimformer finish` (inputs, labelled "
                                "or not; format from its extension, .txt = one text a line); default: the "
                                "calibration file in full")
    header: bool = True
    names: list[str] | None = Field(None, description="column names when the file has no header line")
    columns: dict[str, str] = Field(default_factory=dict, description="task field -> column in the file")
    calibration_columns: dict[str, str] | None = Field(
        None, description="task field -> column in the calibration file, when its columns differ from validation's")
    distill_columns: dict[str, str] | None = Field(
        None, description="task field -> column in the distillation corpus, when its columns differ from validation's")
    validation_size: int | None = Field(None, ge=1, description="rows of validation used during search")
    calibration_size: int = Field(256, ge=1, description="rows of calibration data used per trial")
    batch_size: int = Field(32, ge=1, description="batch size for quality evaluation and calibration")

    @model_validator(mode="after")
    def _names_need_no_header(self):
        if self.names is not None and self.header:
            raise ValueError("names is given, so set header: false (names replace a header line)")
        return self


class GenerateSection(_Section):
    """Decoder latency as users measure it (task causal-lm; docs/decoders.md): batch 1, greedy, a KV cache."""

    prompt_tokens: int = Field(128, ge=1, le=8192, description="prompt length P: prefill ms is one forward over it")
    new_tokens: int = Field(128, ge=1, le=8192, description="greedy tokens G: decode ms is their mean per token")


class DeviceSection(_Section):
    runtime: str = Field("eager", description="eager, compile, onnxruntime, openvino, or auto: the installed "
                         "runtimes compete per candidate (searcher/devices/registry.py)")
    threads: int = Field(2, ge=1, le=512)
    batch_size: int = Field(1, ge=1, le=1024)
    seq_len: int = Field(128, ge=1, le=8192)
    profile: str | None = Field(None, description="device profile JSON; default: this device's own")
    rounds: int = Field(20, ge=3, description="interleaved latency rounds of a candidate's first estimate")
    max_rounds: int = Field(60, ge=3, description="rounds at most for a candidate whose speedup interval "
                            "straddles the budget; also the rounds of the final re-timing")
    warmup: int = Field(3, ge=0)
    generate: GenerateSection | None = Field(None, description="causal-lm: time prefill and decode with a KV cache "
                                             "instead of one forward over batch_size x seq_len")


class BudgetSection(_Section):
    latency_ms: float | None = Field(None, gt=0)
    speedup: float | None = Field(None, gt=0)
    decode_speedup: float | None = Field(None, gt=0, description="with device.generate: decode tokens per second "
                                         "over the original's (latency_ms is then ms per generated token)")
    prefill_speedup: float | None = Field(None, gt=0, description="with device.generate: the original's prefill "
                                          "time (time to first token) over the candidate's")
    max_quality_drop: float | None = Field(None, ge=0, description="in metric points (e.g. Spearman x100)")
    size_mb: float | None = Field(None, gt=0)
    confidence: float = Field(0.9, ge=0.5, lt=1, description="a latency budget holds when the one-sided "
                              "lower bound on the speedup at this confidence meets it")

    @model_validator(mode="after")
    def _one_latency_target(self):
        if sum(v is not None for v in (self.latency_ms, self.speedup, self.decode_speedup)) > 1:
            raise ValueError("give one of latency_ms, speedup and decode_speedup, not several")
        return self


class SearchSection(_Section):
    sampler: Literal[SAMPLERS] = "tpe"
    trials: int = Field(30, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds")
    storage: str | None = Field(None, description="Optuna storage URL or journal file; default: SQLite next to the study")
    study_name: str | None = None
    seed: int | None = 0
    workers: int = Field(1, ge=1, description="trials run at once: worker processes, or Ray trials with backend ray")
    worker_threads: int | None = Field(None, ge=1, description="threads per worker for building and scoring (timing always runs "
                                        "at device.threads, under the host's timing lock); default device.threads // workers")
    backend: Literal["local", "ray"] = Field("local", description="local processes, or Ray Tune")
    ray_address: str | None = Field(None, description="Ray cluster to join (ray://HOST:10001 or auto); default a local Ray")
    objectives: list[Literal["quality", "latency", "size"]] = ["quality", "latency"]
    seed_uniform: bool = Field(True, description="enqueue the baseline and a few uniform plans first")
    seed_sensitivity: bool = Field(
        False, description="enqueue plans whose per-layer bits follow each layer's quantization sensitivity "
        "(Fisher trace, HAWQ-style) at sizes between the uniform bit-widths")
    prescreen: bool = Field(True, description="reject candidates the cost model predicts clearly over budget")
    isolate: bool | Literal["auto"] = Field(
        "auto", description="run each trial in a worker process with a time and memory limit; auto: on "
        "for studies of 50 trials or more")
    trial_timeout: float | None = Field(None, gt=0, description="seconds per isolated trial; default "
                                        "600 s or 5x the slowest finished trial")
    trial_memory_mb: int | None = Field(None, ge=64, description="resident memory limit of the isolated "
                                        "trial worker; default 75% of the machine's memory")

    @field_validator("objectives")
    @classmethod
    def _needs_quality(cls, v):
        if "quality" not in v or len(set(v)) != len(v) or len(v) < 2:
            raise ValueError("objectives must include quality and at least one of latency, size, without repeats")
        return v


class TransferSection(_Section):
    source: str | None = Field(None, description="storage (file or URL) of a finished study of the same model, "
                               "task, data and space on another device: its quality results are reused")
    study: str | None = Field(None, description="study name in that storage; default: its only study")
    latency: Literal["measure", "predict"] = Field(
        "measure", description="measure each transferred plan's latency here, or predict it with this device's "
                               "cost model (needs a profile) after measuring a few anchors")
    anchors: int = Field(5, ge=0, description="with latency: predict, plans measured first to calibrate the model")


class StudyConfig(_Section):
    model: ModelSection = ModelSection()
    task: TaskSection = TaskSection()
    data: DataSection = DataSection()
    device: DeviceSection = DeviceSection()
    budget: BudgetSection = BudgetSection()
    space: dict[str, Any] | None = None
    search: SearchSection = SearchSection()
    transfer: TransferSection = TransferSection()
    path: Path | None = Field(None, exclude=True)

    def resolve_path(self, value: str | None) -> Path | None:
        """A path from the file, relative to the study file's folder."""
        if value is None:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def decoder_refusal(self) -> str | None:
        """Why device.generate and the decoder budgets do not fit this study (None when they do)."""
        gen, b = self.device.generate, self.budget
        if gen is None:
            if b.decode_speedup is not None or b.prefill_speedup is not None:
                return ("budget.decode_speedup and prefill_speedup need device.generate (task causal-lm)")
            return None
        if self.task.type != "causal-lm":
            return (f"device.generate times a decoder's prefill and decode: it needs task causal-lm, "
                             f"not {self.task.type}")
        if self.device.runtime not in DECODER_RUNTIMES:
            return (f"device.generate times a KV-cache generation loop in eager PyTorch or OpenVINO (none is built "
                    f"for runtime {self.device.runtime!r}): set device.runtime: {', '.join(DECODER_RUNTIMES)}")
        if b.speedup is not None:
            return "with device.generate, name the phase: budget.decode_speedup or prefill_speedup, not speedup"
        return None

    @property
    def name(self) -> str:
        return self.search.study_name or (self.path.stem if self.path else "study")


# device.runtime of a decoder study (device.generate): the runtimes with a KV-cache loop (devices/generate.py
# GENERATE_RUNTIMES), or auto (both, the faster counts)
DECODER_RUNTIMES = ("eager", "openvino", "auto")

_SHORTHANDS = {"model": "name", "task": "type"}


def format_error(exc: ValidationError, model: type[BaseModel] = None, root: str = "") -> str:
    """One line for the first error: key path, what is wrong, what is allowed (unknown keys first,
    with a did-you-mean); the formatter is the space's (`slimformer.spaces.format_validation_error`)."""
    from slimformer.spaces import format_validation_error

    return format_validation_error(exc, root=root, model=model or StudyConfig, empty=root or "study")


def _expand(data: dict) -> dict:
    data = dict(data)
    for key, field in _SHORTHANDS.items():
        if isinstance(data.get(key), str):
            data[key] = {field: data[key]}
    return data


def load_study_config(path: str | Path | None = None, data: dict | None = None) -> StudyConfig:
    """Read and validate a study file (or a dict); raise UserError with one clear line."""
    if data is None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"study file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text())
        except UnicodeDecodeError as exc:
            raise UserError(f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
        except RecursionError:
            raise UserError(f"{p}: malformed YAML: nested too deeply") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"{p}: malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        path = p
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a study file must be a mapping of sections, got {type(data).__name__}")
    if any(not isinstance(k, str) for k in data):
        raise UserError(f"{path or 'study'}: section names must be text, got {next(k for k in data if not isinstance(k, str))!r}")
    try:
        cfg = StudyConfig(**_expand(data), path=Path(path).resolve() if path else None)
    except ValidationError as exc:
        raise UserError(f"{path or 'study'}: {format_error(exc)}") from None
    except TypeError as exc:
        raise UserError(f"{path or 'study'}: {exc}") from None
    if cfg.decoder_refusal():
        raise UserError(f"{path or 'study'}: {cfg.decoder_refusal()}")
    if cfg.space is not None:
        from slimformer.spaces import SpaceError, parse_space_config

        try:
            parse_space_config(cfg.space)
        except SpaceError as exc:
            raise UserError(f"{path or 'study'}: {exc}") from None
    return cfg
