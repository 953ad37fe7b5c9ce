"""An onnx/openvino export is a folder the user's library opens (issue 28), with a model card and a
check on what the task scores (padding positions left out).

sentence-transformers' onnx and openvino backends hand the model file to Optimum (optimum-onnx,
optimum-intel), which cannot be installed beside slimformer's transformers 5.x (optimum-onnx 0.1.0
needs transformers<4.58, optimum-intel 2.2.0 <5.6). So here `SentenceTransformer(path, backend=...)`
runs with everything of its own (modules.json, the Pooling module, sentence_bert_config.json, the
tokenizer, and its own `backend_should_export`, which picks the file in the folder) and only
Optimum's model class replaced by a stand-in that runs the file it picked in the same runtime.
benchmarks/export_libraries.py runs the real Optimum classes in their own virtual environments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

SENTENCES = ["a short sentence", "and a much longer second sentence with more words in it", "three words here"]
TOLERANCE = 1e-4  # float32 graph, same runtime: the embeddings sentence-transformers gives vs slimformer's


@pytest.fixture(scope="module")
def exports(tmp_path_factory, study_writer):
    """A searched tiny study (trial 1 pruned, float32) and its onnx and openvino exports."""
    folder = tmp_path_factory.mktemp("libraries")
    study = study_writer(folder, space={"heads": {"choices": [1, 2, 4]}, "ffn": {"choices": [64, 128, 256]},
                                        "bits": [32], "importance": ["magnitude"]},
                         search={"trials": 2, "seed": 0, "sampler": "random"})
    cli = [sys.executable, "-m", "slimformer.searcher.cli"]
    res = subprocess.run([*cli, "search", str(study)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {}
    for fmt in ("onnx", "openvino"):
        out[fmt] = folder / f"export-{fmt}"
        res = subprocess.run([*cli, "export", str(study), "--trial", "1", "--format", fmt, "--out", str(out[fmt])],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        out[f"{fmt}-log"] = res.stderr
    return SimpleNamespace(study=study, **{k.replace("-", "_"): v for k, v in out.items()})


class _StandIn(torch.nn.Module):
    """Optimum's ORTModel/OVModel for feature extraction as sentence-transformers calls it: forward
    of the tokenizer's tensors -> {"last_hidden_state": ...}, from the file ST's own lookup picked."""

    def __init__(self, run, config):
        super().__init__()
        self.run, self.config = run, config

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_):
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return {"last_hidden_state": torch.from_numpy(self.run({k: v.numpy() for k, v in feed.items() if v is not None}))}


def _stand_in_loader(fmt):
    from sentence_transformers.backend.utils import backend_should_export

    def load(model_name_or_path, config, task_name, **model_kwargs):
        assert task_name == "feature-extraction"
        target, glob, name = (("model.onnx", "*.onnx", "ONNX") if fmt == "onnx"
                              else ("openvino_model.xml", "openvino*.xml", "OpenVINO"))
        export, kwargs = backend_should_export(Path(model_name_or_path), True, dict(model_kwargs), target, glob, name)
        assert not export, "sentence-transformers did not find the model file and would export one"
        path = Path(model_name_or_path, kwargs.get("subfolder", ""), kwargs["file_name"])
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = {i.name for i in sess.get_inputs()}
            run = lambda feed: sess.run(["last_hidden_state"], {k: v for k, v in feed.items() if k in names})[0]  # noqa: E731
        else:
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", kwargs.get("ov_config") or {})
            names = {i.get_any_name() for i in compiled.inputs}
            run = lambda feed: compiled({k: v for k, v in feed.items() if k in names})["last_hidden_state"]  # noqa: E731
        return _StandIn(run, config)

    return load


def _slimformer_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """What the study scores: the artifact's last_hidden_state mean-pooled over real tokens."""
    from slimformer.methods.distill import mean_pool
    from slimformer.searcher.devices.artifacts import ArtifactModel, open_artifact
    from transformers import AutoTokenizer

    _, session = open_artifact(folder, threads=1)
    enc = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, truncation=True, max_length=128,
                                                     return_tensors="pt")
    inputs = {k: v for k, v in enc.items() if k in session.inputs}
    out = ArtifactModel(session, None)(**inputs)
    return mean_pool(out.last_hidden_state.float(), inputs["attention_mask"]).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_sentence_transformers_opens_the_export(exports, monkeypatch, fmt):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import transformer

    folder = getattr(exports, fmt)
    monkeypatch.setattr(transformer, f"load_{fmt}_model", _stand_in_loader(fmt))
    manifest = json.loads((folder / "manifest.json").read_text())
    # the card's settings (OpenVINO's defaults may run bf16 on a CPU that has it)
    kwargs = {"model_kwargs": {"ov_config": manifest["compile_config"]}} if fmt == "openvino" else {}
    model = SentenceTransformer(str(folder), backend=fmt, device="cpu", **kwargs)
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling"]  # the tiny base has no Normalize
    assert model[1].pooling_mode in ("mean", ("mean",)) and model.max_seq_length == 128 and model.similarity_fn_name == "cosine"
    got = model.encode(SENTENCES, convert_to_numpy=True, batch_size=2)  # its own batching and padding
    want = _slimformer_embeddings(folder, SENTENCES)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) < TOLERANCE


def test_config_does_not_rebuild_the_unpruned_shape(exports):
    """config.json says what was pruned; no library builds the unpruned PyTorch model from the folder;
    the graph carries the real (pruned) widths."""
    import onnx
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    folder = exports.onnx
    config = json.loads((folder / "config.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    note = config["slimformer"]
    assert note["pruned"] and not note["per_layer_shapes_in_config"]
    assert all(note["plan"][k] == manifest["plan"][k] for k in ("layers", "heads", "ffn"))
    assert "only the ONNX/OpenVINO graph carries the real shapes" in note["note"]
    with pytest.raises(OSError):
        AutoModel.from_pretrained(str(folder))
    with pytest.raises(OSError):
        SentenceTransformer(str(folder), device="cpu")  # the torch backend: no weights to build from
    graph = onnx.load(str(folder / "onnx" / "model.onnx")).graph
    widths = {tuple(i.dims) for i in graph.initializer if len(i.dims) == 2}
    kept_ffn = manifest["plan"]["ffn"][0]
    assert kept_ffn < config["intermediate_size"]
    h, full = config["hidden_size"], config["intermediate_size"]
    # MatMul weights are [in, out]: the FFN input projection is (hidden, width); (width, hidden) would
    # also match the position embeddings (max positions = the unpruned width in the tiny BERT)
    assert (h, kept_ffn) in widths and (h, full) not in widths


def _front_matter(text: str) -> dict:
    head = text.split("\n---", 1)[0].splitlines()[1:]
    out, key = {}, None
    for line in head:
        if line.startswith("- "):
            out.setdefault(key, []).append(line[2:])
        else:
            key, _, value = line.partition(":")
            if value.strip():
                out[key] = value.strip()
    return out


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_card_holds_the_fields(exports, fmt):
    folder = getattr(exports, fmt)
    card = (folder / "README.md").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    front = _front_matter(card)
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "sentence-similarity"
    assert fmt in front["tags"] and "README.md" in manifest["files"]
    for section in ("## Plan", "## Format", "## Speed", "## Quality", "## Load it", "## Settings that give"):
        assert section in card
    assert f"FFN neurons kept per layer (layer:width) 0:{manifest['plan']['ffn'][0]}" in card
    timed = manifest["timed_on"]
    assert (f"{timed['threads']} threads, batch {timed['batch_size']}, sequence length {timed['seq_len']}" in card
            and timed["cpu"] in card)
    assert "Speedup:" in card and "interval" in card
    assert f"{manifest['verification']['quality']:.2f}" in card and "| test |" in card
    assert f'SentenceTransformer("PATH", backend="{fmt}"' in card
    if fmt == "openvino":
        assert all(f'"{k}": {json.dumps(v)}' in card for k, v in manifest["compile_config"].items())
        assert '"ov_config"' in card
    else:
        assert "ORT_ENABLE_ALL" in card and f"intra_op_num_threads = {timed['threads']}" in card


def test_license_and_base_model_come_from_the_base_card(tmp_path):
    from slimformer.searcher.devices.card import base_card_facts, render_card

    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: org/base\ntags:\n- x\n---\n# hi\n")
    facts = base_card_facts(str(tmp_path), "minilm-l6")
    assert facts == {"license": "apache-2.0", "base_model": "org/base"}
    assert base_card_facts(None, "org/model") == {"base_model": "org/model"}
    card = render_card({"format": "onnx", "task": "text-classification", "plan": {}, "model_files": ["model.onnx"]},
                       facts)
    front = _front_matter(card)
    assert front["license"] == "apache-2.0" and front["base_model"] == "org/base"
    assert front["pipeline_tag"] == "text-classification" and "ORTModelForSequenceClassification" in card


def test_the_check_prints_the_scored_figure(exports):
    assert "max abs difference of the mean-pooled embedding's direction vs PyTorch" in exports.onnx_log
    assert "padding left out" in exports.onnx_log


def _check(session_out, reference_out, mask):
    from slimformer.searcher.devices.artifacts import ArtifactModel, check_scored
    from slimformer.searcher.devices.runtime import ArtifactSession
    from slimformer.searcher.problem.tasks import SentenceSimilarity

    session = ArtifactSession(lambda feed: [session_out.numpy()], ["input_ids", "attention_mask"], ["last_hidden_state"])
    from transformers.modeling_outputs import BaseModelOutput

    reference = lambda **_: BaseModelOutput(last_hidden_state=reference_out)  # noqa: E731
    art = ArtifactModel(session, None, reference=reference, features=SentenceSimilarity().scored_features())
    art(input_ids=torch.ones_like(mask), attention_mask=mask)
    check_scored(art, "mean-pooled embedding")
    return art


def test_the_check_ignores_padding_positions():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = torch.randn(2, 5, 8)
    wild = ref.clone()
    wild[0, 3:] = 1e4  # padding positions: meaningless there
    art = _check(wild, ref, mask)
    assert art.scored_diff == 0.0 and art.max_abs_diff["last_hidden_state"] == 0.0


def test_the_check_fails_when_real_tokens_differ():
    from slimformer.methods.export import ExportError

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = torch.randn(2, 5, 8)
    off = ref.clone()
    off[0, :3] += 5.0  # real tokens
    with pytest.raises(ExportError, match="mean-pooled embedding differs"):
        _check(off, ref, mask)


def test_the_card_reads_a_plan_per_original_layer_and_its_shorthands():
    """A plan's lists are per ORIGINAL layer (a dropped layer keeps its entry); one int means every layer."""
    from slimformer.searcher.devices.card import plan_in_words

    dropped = plan_in_words({"heads": [4, 5, 6], "ffn": [64, 32, 16], "layers": [0, 2]}, 3)
    assert "attention heads kept per layer (layer:heads) 0:4, 2:6" in dropped[1]
    assert dropped[2] == "FFN neurons kept per layer (layer:width) 0:64, 2:16"
    shorthand = plan_in_words({"ffn": 768, "bits": 8}, 2)
    assert shorthand[0] == "FFN neurons kept per layer (layer:width) 0:768, 1:768"
    assert shorthand[1].startswith("weight bits per layer (layer:bits) 0:8, 1:8")


# ----- classifiers: the Optimum layout ----------------------------------------------------------
# Optimum cannot be installed here (optimum-intel 2.2.0: transformers<5.6), so these tests hold the
# folder to what ORTModelForSequenceClassification / OVModelForSequenceClassification.from_pretrained(DIR)
# read (optimum/onnxruntime/modeling.py, optimum/intel/openvino/modeling_base.py): the default file
# name at the folder's top (model.onnx; openvino_model.xml + .bin), config.json (model_type, labels),
# inputs among input_ids/attention_mask/token_type_ids and an output named `logits`, then run that
# file the way Optimum does (the tokenizer's tensors in, logits out). benchmarks/export_libraries.py
# --task sst2 runs the real classes in their own venvs.
OPTIMUM_FILES = {"onnx": ["model.onnx"], "openvino": ["openvino_model.xml", "openvino_model.bin"]}
OPTIMUM_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def classifier_exports(tmp_path_factory, tiny_model_dir):
    """A tiny BERT classifier study (trial 1 pruned) searched and exported in both formats."""
    import transformers as T
    import yaml
    from conftest import STUDIES, copy_tokenizer

    folder = tmp_path_factory.mktemp("classifier-libraries")
    torch.manual_seed(0)
    T.BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(folder / "clf")
    copy_tokenizer(tiny_model_dir, folder / "clf")
    rows = [ln.split("\t") for ln in (STUDIES / "data" / "sts-dev.tsv").read_text().splitlines()[:48]]
    (folder / "dev.jsonl").write_text("".join(json.dumps({"text": r[5], "label": int(float(r[4]) >= 2.5)}) + "\n"
                                              for r in rows))
    study = {"model": str(folder / "clf"), "task": {"type": "text-classification", "max_length": MAX_LENGTH},
             "data": {"validation": "dev.jsonl", "calibration": "dev.jsonl", "calibration_size": 16},
             "device": {"threads": 1, "seq_len": 16, "rounds": 4, "warmup": 1},
             "space": {"heads": {"choices": [1, 2, 4]}, "ffn": {"choices": [64, 128]}, "bits": [32],
                       "importance": ["magnitude"]},
             "search": {"trials": 2, "seed": 0, "sampler": "random"}}
    path = folder / "clf-study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    cli = [sys.executable, "-m", "slimformer.searcher.cli"]
    res = subprocess.run([*cli, "search", str(path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {}
    for fmt in ("onnx", "openvino"):
        out[fmt] = folder / f"clf-{fmt}"
        res = subprocess.run([*cli, "export", str(path), "--trial", "1", "--format", fmt, "--out", str(out[fmt])],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    return SimpleNamespace(study=path, texts=[r[5] for r in rows], **out)


def _optimum_style_logits(folder: Path, fmt: str, texts: list[str], max_length: int) -> np.ndarray:
    """The folder's top-level default file run as Optimum's ...ForSequenceClassification runs it."""
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, truncation=True, max_length=max_length,
                                                     return_tensors="np")
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        assert names <= OPTIMUM_INPUTS and "logits" in [o.name for o in sess.get_outputs()]
        return sess.run(["logits"], {k: v for k, v in enc.items() if k in names})[0]
    import openvino as ov

    manifest = json.loads((folder / "manifest.json").read_text())
    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU", manifest.get("compile_config") or {})
    names = {i.get_any_name() for i in compiled.inputs}
    assert names <= OPTIMUM_INPUTS and "logits" in {n for o in compiled.outputs for n in o.get_names()}
    return compiled({k: v for k, v in enc.items() if k in names})["logits"]


def _slimformer_logits(folder: Path, texts: list[str]) -> np.ndarray:
    from slimformer.searcher.devices.artifacts import ArtifactModel, open_artifact
    from transformers import AutoTokenizer

    _, session = open_artifact(folder, threads=1)
    enc = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, truncation=True, max_length=MAX_LENGTH,
                                                     return_tensors="pt")
    return ArtifactModel(session, None)(**{k: v for k, v in enc.items() if k in session.inputs}).logits.numpy()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_a_classifier_export_is_the_optimum_layout(classifier_exports, fmt):
    folder = getattr(classifier_exports, fmt)
    manifest = json.loads((folder / "manifest.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    # the model file(s) at the folder's top where Optimum looks; beside them only OpenVINO's compile settings
    assert [f for f in manifest["model_files"] if f != "compile.json"] == OPTIMUM_FILES[fmt]
    assert all((folder / f).is_file() for f in manifest["model_files"])
    assert not (folder / "modules.json").exists() and not (folder / fmt).exists()  # no sentence-transformers layout
    assert config["model_type"] == "bert" and len(config["id2label"]) == 2
    assert manifest["max_length"] == MAX_LENGTH and config["slimformer"]["max_length"] == MAX_LENGTH
    texts = classifier_exports.texts[:8]
    got = _optimum_style_logits(folder, fmt, texts, config["slimformer"]["max_length"])
    want = _slimformer_logits(folder, texts)
    assert got.shape == want.shape == (8, 2)
    assert float(np.abs(got - want).max()) < TOLERANCE


def test_a_classifier_config_does_not_rebuild_the_unpruned_shape(classifier_exports):
    """The pruned classifier's config.json says what was pruned; the torch route refuses the folder
    instead of building the base model's shape from it; the graph carries the pruned FFN width."""
    import onnx
    from transformers import AutoModelForSequenceClassification

    folder = classifier_exports.onnx
    config = json.loads((folder / "config.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert config["slimformer"]["pruned"] and not config["slimformer"]["per_layer_shapes_in_config"]
    assert manifest["plan"]["layers"] is None and config["num_hidden_layers"] == 4  # no depth searched: all kept
    with pytest.raises(OSError):
        AutoModelForSequenceClassification.from_pretrained(str(folder))
    kept = manifest["plan"]["ffn"][0]
    assert kept < config["intermediate_size"]
    widths = {tuple(i.dims) for i in onnx.load(str(folder / "model.onnx")).graph.initializer if len(i.dims) == 2}
    assert (config["hidden_size"], kept) in widths and (config["hidden_size"], config["intermediate_size"]) not in widths


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_a_classifier_card_loads_it_with_optimum_at_the_scored_length(classifier_exports, fmt):
    folder = getattr(classifier_exports, fmt)
    card = (folder / "README.md").read_text()
    front = _front_matter(card)
    assert front["pipeline_tag"] == "text-classification" and "optimum" in front["tags"]
    cls = "ORTModelForSequenceClassification" if fmt == "onnx" else "OVModelForSequenceClassification"
    assert f'{cls}.from_pretrained("PATH"' in card
    assert f"truncation=True, max_length={MAX_LENGTH}" in card
