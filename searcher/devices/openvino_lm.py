"""OpenVINO as decoder users run it (docs/decoders.md): a stateful LLM IR with the KV cache inside, real
int8 / int4 weight kernels (NNCF `compress_weights`), greedy generation timed in the protocol of
devices/generate.py, and a folder that `openvino_genai.LLMPipeline` loads.

- `convert_lm(model, folder, bits=..., group_size=64)`: the (pruned, float32) PyTorch causal LM traced by
  `openvino.convert_model` through a wrapper whose inputs are input_ids, attention_mask, position_ids and
  every layer's past key and value (a transformers `DynamicCache` built from them) and whose outputs are
  the logits and every layer's present key and value; then made stateful as optimum-intel does
  (`beam_idx` gathers the cache, the past/present pairs become variables read and assigned inside the
  model, each initialised to an empty cache). Tracing passes an attention mask, so transformers
  materialises the causal mask instead of baking `is_causal` into the graph.
- Weights per transformer layer from the plan's bits (`plan_weights`): 32 float, 8 INT8_ASYM
  (per output channel), 4 INT4_ASYM in groups of `group_size` input channels (64: SmolLM2's hidden 576
  is not divisible by NNCF's default 128): **real** kernels under OpenVINO (the MatMul reads the
  compressed weights and decompresses them in the kernel), only those layers' MatMuls; the embeddings
  and the LM head stay float. `weights="int8_asym" | "int4_asym"` instead compresses the whole model
  with NNCF's own defaults (the peers: INT4 keeps the embeddings and the last MatMul in INT8_ASYM).
  Elsewhere bits 4 stay simulated (`BITS_MARK`).
- `save_lm`: the IR, config.json, generation_config.json and the tokenizer IRs: the folder GenAI's LLMPipeline opens.
- `OVGeneration`: slimformer's own greedy loop on the IR (devices/genai.py times candidates in LLMPipeline, as
  users run them; this loop when GenAI is missing); `OVScorer`: full-sequence logits, to score the IR itself.

Imports: errors, methods (public names).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import UserError
from .openvino import INSTALL_HINT, compile_ir, flushes_denormals, quiet_nncf
from .runtime import optional_module

__all__ = ["convert_lm", "save_lm", "load_lm", "plan_weights", "plan_generation", "plan_source", "fit_group",
           "OVGeneration", "OVScorer", "IR_XML", "WHOLE_MODEL_MODES", "BITS_MARK", "lm_compile_config", "stateful_io"]

IR_XML = "openvino_model.xml"  # the name GenAI's LLMPipeline looks for
WHOLE_MODEL_MODES = {"int8_asym": "INT8_ASYM", "int4_asym": "INT4_ASYM", "int4_sym": "INT4_SYM"}
# bits of a plan's layer -> NNCF mode under this runtime (real kernels); other runtimes simulate bits 4
BITS_MODE = {8: "INT8_ASYM", 4: "INT4_ASYM"}
BITS_MARK = {"openvino": "real", "eager": "simulated"}  # what bits 4 are, per runtime


class _KVModel(torch.nn.Module):
    """input_ids, attention_mask, position_ids, past k/v per layer -> logits, present k/v per layer."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache()
        cache.layers = []
        for i in range(self.layers):  # filled directly: update() would concatenate onto an empty rank-1 tensor
            layer = DynamicLayer()
            layer.device, layer.keys, layer.values = past[2 * i].device, past[2 * i], past[2 * i + 1]
            layer.is_initialized = True
            cache.layers.append(layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        flat = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *flat)


def _kv_shapes(model) -> list[tuple[int, int]]:
    """(kv heads, head dim) of every layer, read from its k projection (pruned layers included)."""
    from ...methods import get_adapter

    adapter = get_adapter(model)
    d = adapter.head_dim
    out = []
    for layer in adapter.layers():
        if adapter.num_heads(layer) == 0:
            raise UserError("OpenVINO LLM: a layer without attention has no KV cache to make stateful; "
                            "keep at least one KV group per layer")
        out.append((adapter.linear(layer, adapter.k).weight.shape[0] // d, d))
    return out


def stateful_io(ov_model) -> tuple[list[str], list[str]]:
    """The past (input) and present (output) names of the cache, in layer order."""
    past = [n for p in ov_model.inputs for n in p.get_names() if n.startswith("past_key_values")]
    present = [n for p in ov_model.outputs for n in p.get_names() if n.startswith("present")]
    return past, present


def _make_stateful(ov_model) -> None:
    """beam_idx gathers every past tensor (batch axis 0); past/present pairs become variables, each
    initialised to an empty cache of the input's batch (optimum-intel's stateful decoder)."""
    import openvino as ov
    import openvino.opset13 as op
    from openvino._offline_transformations import apply_make_stateful_transformation

    past, present = stateful_io(ov_model)
    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam = op.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam.output(0).get_tensor().add_names({"beam_idx"})
    ov_model.add_parameters([beam])
    for name in past:
        port = ov_model.input(name)
        consumers = port.get_target_inputs()
        gather = op.gather(port, beam, op.constant(0))
        for c in consumers:
            c.replace_source_output(gather.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(past, present)))
    ids = ov_model.input("input_ids")
    n = op.gather(op.shape_of(ids, output_type="i64"), op.constant([0]), op.constant(0))
    for node in ov_model.get_ops():
        if node.get_type_name() == "ReadValue":
            dims = [d.min_length for d in node.get_output_partial_shape(0)]
            parts = [n] + [op.constant(np.array([d], dtype=np.int64)) for d in dims[1:]]
            zero = op.constant(0.0, dtype=node.get_output_element_type(0))
            node.set_arguments([op.broadcast(zero, op.concat(parts, axis=0))])
    ov_model.validate_nodes_and_infer_types()


def convert_lm(model, bits: list[int] | None = None, group_size: int = 64, weights: str | None = None):
    """The stateful OpenVINO model of a float32 causal LM; `bits` (one per layer of `model`, in its own
    order) compresses those layers' weights (8 INT8_ASYM, 4 INT4_ASYM in groups of `group_size`), or
    `weights` (WHOLE_MODEL_MODES) the whole model with NNCF's defaults."""
    ov = optional_module("openvino", INSTALL_HINT)
    if weights is not None and weights not in WHOLE_MODEL_MODES:
        raise UserError(f"OpenVINO LLM: weights must be one of {', '.join(WHOLE_MODEL_MODES)}, got {weights!r}")
    shapes = _kv_shapes(model)
    model = model.float().eval()
    p, q = 2, 3  # a past and a new length both > 1, so both stay dynamic
    example = [torch.ones(1, q, dtype=torch.long), torch.ones(1, p + q, dtype=torch.long),
               torch.arange(p, p + q)[None]]
    for h, d in shapes:
        example += [torch.zeros(1, h, p, d), torch.zeros(1, h, p, d)]
    with torch.no_grad(), warnings.catch_warnings(action="ignore"):  # the tracer's warnings on transformers' mask code
        ov_model = ov.convert_model(_KVModel(model, len(shapes)), example_input=tuple(example))
    names = ["input_ids", "attention_mask", "position_ids"]
    names += [f"past_key_values.{i}.{kv}" for i in range(len(shapes)) for kv in ("key", "value")]
    for port, name in zip(ov_model.inputs, names):
        port.get_tensor().set_names({name})
    outs = ["logits"] + [f"present.{i}.{kv}" for i in range(len(shapes)) for kv in ("key", "value")]
    for port, name in zip(ov_model.outputs, outs):
        port.get_tensor().set_names({name})
    _make_stateful(ov_model)
    if weights is not None:
        _compress(ov_model, WHOLE_MODEL_MODES[weights], group_size if "INT4" in WHOLE_MODEL_MODES[weights] else None)
    elif bits is not None:
        if len(bits) != len(shapes):
            raise ValueError(f"bits has {len(bits)} entries for a model of {len(shapes)} layers")
        for b, mode in BITS_MODE.items():
            layers = [i for i, x in enumerate(bits) if x == b]
            if layers:
                _compress(ov_model, mode, group_size if b == 4 else None, layers)
        other = sorted({b for b in bits} - {32, *BITS_MODE})
        if other:
            raise UserError(f"OpenVINO LLM: bits {other} have no weight kernel here (32, 8 and 4 do)")
    return ov_model


def _compress(ov_model, mode: str, group_size: int | None, layers: list[int] | None = None) -> None:
    """nncf.compress_weights in `mode`; with `layers`, only the weights of those transformer layers."""
    import nncf

    kwargs: dict = {"mode": getattr(nncf.CompressWeightsMode, mode)}
    if group_size is not None:
        kwargs.update(group_size=group_size, ratio=1.0)
    if layers is not None:
        marks = tuple(f"layers.{i}." for i in layers)
        others = [n.get_friendly_name() for n in ov_model.get_ops()
                  if not any(m in n.get_friendly_name() for m in marks)]
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=others, validate=False)
        if group_size is not None:  # int4 modes keep the first and last weights in the backup mode unless told
            kwargs.update(all_layers=True, backup_mode=nncf.BackupMode.NONE)
    with quiet_nncf():
        nncf.compress_weights(ov_model, **kwargs)


def plan_weights(plan, num_layers: int) -> list[int]:
    """A resolved plan's bits of the layers it keeps, in the pruned model's order (bits 16 count as 32:
    bf16 is the compile-time precision, model-wide)."""
    bits = plan.bits if isinstance(plan.bits, tuple) else (plan.bits or 32,) * num_layers
    kept = plan.layers if plan.layers is not None else tuple(range(num_layers))
    return [32 if bits[i] == 16 else bits[i] for i in kept]


def save_lm(ov_model, folder: Path, model=None, tokenizer=None) -> list[str]:
    """The folder GenAI's LLMPipeline opens: the IR, the model's configs and the tokenizer IRs."""
    ov = optional_module("openvino", INSTALL_HINT)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, folder / IR_XML)
    files = [IR_XML, IR_XML.replace(".xml", ".bin")]
    if model is not None:
        cfg = model.config.to_dict()
        cfg.pop("slimformer", None)
        (folder / "config.json").write_text(json.dumps(cfg, indent=1, default=str))
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(folder)
            files.append("generation_config.json")
        files.append("config.json")
    if tokenizer is not None:
        tk = optional_module("openvino_tokenizers", "OpenVINO LLM: the tokenizer IRs need: pip install openvino-tokenizers")
        tok, detok = tk.convert_tokenizer(tokenizer, with_detokenizer=True)
        ov.save_model(tok, folder / "openvino_tokenizer.xml")
        ov.save_model(detok, folder / "openvino_detokenizer.xml")
        files += ["openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                  "openvino_detokenizer.bin"]
    return files


def lm_compile_config(precision: str = "f32", exact: bool = False) -> dict:
    """What the CPU plugin is told besides devices/openvino.COMPILE_CONFIG (LATENCY, denormals flushed, no
    pinning): f32 or bf16 inference; `exact` also keeps the KV cache in f32 and turns off the dynamic
    quantization of activations (the plugin's defaults on x86 store the cache in u8 and quantize the
    activations of compressed-weight MatMuls in groups)."""
    if precision not in ("f32", "bf16"):
        raise UserError(f"OpenVINO LLM: precision must be f32 or bf16, got {precision!r}")
    cfg: dict = {"INFERENCE_PRECISION_HINT": precision}
    if exact:
        cfg.update(KV_CACHE_PRECISION="f32", DYNAMIC_QUANTIZATION_GROUP_SIZE=0)
    return cfg


def _last_logits_only(ov_model):
    """A copy whose LM head reads the last position only (generation: one logits row per call)."""
    import openvino.opset13 as op

    m = ov_model.clone()
    head = m.output("logits").get_node().input_value(0).get_node()
    while head.get_type_name() != "MatMul":
        head = head.input_value(0).get_node()
    x = head.input_value(0)
    last = op.slice(x, op.constant([-1], np.int64), op.constant([np.iinfo(np.int64).max], np.int64),
                    op.constant([1], np.int64), op.constant([1], np.int64))
    head.input(0).replace_source_output(last.output(0))
    m.validate_nodes_and_infer_types()
    return m


def load_lm(source, threads: int, precision: str = "f32", exact: bool = False, last_logits: bool = True):
    """A compiled model of an IR (an ov.Model or a folder with IR_XML), compiled as devices/openvino
    compiles (`compile_ir`) with `lm_compile_config`; `last_logits` slices the LM head's input to the last
    position (generation)."""
    ov = optional_module("openvino", INSTALL_HINT)
    model = ov.Core().read_model(str(Path(source) / IR_XML)) if isinstance(source, (str, Path)) else source
    return compile_ir(_last_logits_only(model) if last_logits else model, threads, lm_compile_config(precision, exact))


@contextlib.contextmanager
def _flushing(flush: bool):
    """This thread's FTZ/DAZ as the compiled model wants it during its inferences, put back afterwards (a
    synchronous inference runs on the calling thread, and PyTorch runs there too)."""
    before = flushes_denormals()
    if flush != before:
        torch.set_flush_denormal(flush)
    try:
        yield
    finally:
        if flushes_denormals() != before:
            torch.set_flush_denormal(before)


class OVGeneration:
    """Greedy generation at batch 1 on a compiled stateful IR, with the interface of `Generation`."""

    def __init__(self, compiled, prompt: torch.Tensor, new_tokens: int):
        if prompt.dim() != 2 or prompt.shape[0] != 1:
            raise ValueError(f"a generation prompt is 1 x P token ids, got shape {tuple(prompt.shape)}")
        self.request = compiled.create_infer_request()
        self.flush = bool(compiled.get_property("CPU_DENORMALS_OPTIMIZATION"))
        self.prompt = prompt.numpy().astype(np.int64)
        self.new_tokens = int(new_tokens)
        with _flushing(self.flush):
            self.first = self._prefill()
        self.saved = [s.state.data.copy() for s in self.request.query_state()]
        self.source: dict = {}

    def _infer(self, ids: np.ndarray, start: int) -> np.ndarray:
        n = ids.shape[1]
        self.request.infer({"input_ids": ids, "attention_mask": np.ones((1, start + n), np.int64),
                            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
                            "beam_idx": np.zeros(1, np.int32)})
        return self.request.get_tensor("logits").data

    def _prefill(self) -> int:
        self.request.reset_state()
        return int(self._infer(self.prompt, 0)[0, -1].argmax())

    def prefill(self) -> int:
        """The prompt into a fresh state; returns the first new token."""
        with _flushing(self.flush):
            return self._prefill()

    def _steps(self, token: int, out: list | None = None) -> int:
        start = self.prompt.shape[1]
        for k in range(self.new_tokens):
            if out is not None:
                out.append(token)
            token = int(self._infer(np.array([[token]], np.int64), start + k)[0, -1].argmax())
        return token

    def decode(self) -> int:
        """G greedy steps on the prefilled state, put back to the prompt first."""
        import openvino as ov

        with _flushing(self.flush):
            for s, data in zip(self.request.query_state(), self.saved):
                s.state = ov.Tensor(data)
            return self._steps(self.first)

    def tokens(self) -> list[int]:
        """The G greedy tokens generated after the prompt (the first one from the prefill)."""
        out: list[int] = []
        with _flushing(self.flush):
            self._steps(self._prefill(), out)
        return out

    def scorer(self) -> OVScorer:
        """Full-sequence logits of the same IR compiled the same way (`plan_generation`'s `source`)."""
        src = self.source
        return OVScorer(load_lm(src["ov_model"], src["threads"], src["precision"], last_logits=False))

    def __call__(self) -> dict[str, float]:
        import time

        with _flushing(self.flush):
            t0 = time.perf_counter()
            first = self._prefill()
            t1 = time.perf_counter()
            self._steps(first)
            t2 = time.perf_counter()
        return {"prefill": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3 / self.new_tokens}


def fit_group(model, bits: list[int] | None, group_size: int) -> int:
    """The int4 group size for `model`: `group_size`, or the largest divisor of it that divides the input
    width of every Linear in a bits-4 layer (a pruned FFN of 1,000 neurons cannot be cut in groups of 64)."""
    import math

    four = {i for i, b in enumerate(bits or ()) if b == 4}
    g = group_size
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and any(f"layers.{i}." in name + "." for i in four):
            g = math.gcd(g, m.in_features)
    return g


def plan_source(model, threads: int, plan=None, group_size: int | None = None) -> dict:
    """The stateful IR of a float (pruned) causal LM, a resolved plan's bits 8/4 as real int8/int4 weights (`fit_group`;
    bits 16: bf16 inference), and how it is compiled: ov_model, threads, precision, bits, group_size."""
    bits, precision = None, "f32"
    if plan is not None and plan.bits is not None:
        n = len(plan.bits) if isinstance(plan.bits, tuple) else max(plan.layers or (0,)) + 1
        bits = plan_weights(plan, n)
        precision = "bf16" if 16 in (plan.bits if isinstance(plan.bits, tuple) else (plan.bits,)) else "f32"
    group = fit_group(model, bits, group_size or (plan.group_size if plan is not None else 64))
    return {"ov_model": convert_lm(model, bits=bits, group_size=group), "threads": threads, "precision": precision,
            "bits": bits, "group_size": group if 4 in (bits or ()) else None}


def plan_generation(model, prompt: torch.Tensor, new_tokens: int, threads: int, plan=None, group_size: int | None = None):
    """`OVGeneration` (slimformer's own loop) of `plan_source`'s IR; its `source` is that dict."""
    src = plan_source(model, threads, plan, group_size)
    gen = OVGeneration(load_lm(src["ov_model"], threads, src["precision"]), prompt, new_tokens)
    gen.source = src
    return gen


class OVScorer:
    """Full-sequence logits of a compiled stateful IR (full logits: `load_lm(..., last_logits=False)`),
    called like a PyTorch causal LM on batches of rows (each row alone, in a fresh state, its padding
    dropped), for perplexity, KL and top-1 agreement of the artifact."""

    def __init__(self, compiled):
        self.request = compiled.create_infer_request()
        self.flush = bool(compiled.get_property("CPU_DENORMALS_OPTIMIZATION"))

    def __call__(self, input_ids, attention_mask=None, **_):
        with _flushing(self.flush):
            return SimpleNamespace(logits=self._logits(input_ids, attention_mask))

    def _logits(self, input_ids, attention_mask):
        rows = []
        for i in range(input_ids.shape[0]):
            n = int(attention_mask[i].sum()) if attention_mask is not None else input_ids.shape[1]
            self.request.reset_state()
            ids = input_ids[i:i + 1, :n].numpy().astype(np.int64)
            self.request.infer({"input_ids": ids, "attention_mask": np.ones((1, n), np.int64),
                                "position_ids": np.arange(n, dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)})
            logits = torch.from_numpy(self.request.get_tensor("logits").data.copy())
            rows.append(torch.nn.functional.pad(logits, (0, 0, 0, input_ids.shape[1] - n)))
        return torch.cat(rows)
