"""`slimformer export --format onnx|openvino`: the artifact loads and runs with plain onnxruntime /
openvino in a process that never imports slimformer, matches the PyTorch model (1e-4 in float32, the
measured tolerance in int8), carries a sha256 manifest that `evaluate` checks, and bad input (a format
the trial cannot be written in, a runtime not installed, a damaged file) exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

# ORT int8 (dynamic activations) and OpenVINO int8 weights against torch.ao dynamic int8 on the tiny BERT:
# measured 1.1e-3 (OpenVINO) and 0.02-0.05 (ORT) max abs difference on LayerNorm-scaled outputs
INT8_TOLERANCE = 0.1

LOADER = r"""
import json
import sys
import numpy as np
fmt, folder, feed_path, out_path = sys.argv[1:]
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(folder)
feed = dict(np.load(feed_path))
if fmt == "onnx":
    import onnxruntime as ort
    sess = ort.InferenceSession(f"{folder}/onnx/model.onnx")  # where sentence-transformers looks
    names = [i.name for i in sess.get_inputs()]
    run = lambda f: sess.run(None, {k: f[k] for k in names})[0]
else:
    import openvino as ov
    config = json.load(open(f"{folder}/manifest.json"))["compile_config"]  # what it was timed with
    compiled = ov.Core().compile_model(f"{folder}/openvino/openvino_model.xml", "CPU", config)
    names = [i.get_any_name() for i in compiled.inputs]
    run = lambda f: compiled({k: f[k] for k in names})[0]
out = run(feed)
enc = dict(tok(["a short sentence", "and a longer second sentence here"], padding=True, return_tensors="np"))
assert run(enc).shape[:2] == enc["input_ids"].shape  # dynamic batch and sequence axes
assert "slimformer" not in sys.modules
np.save(out_path, out)
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory, study_writer, tiny_model_dir):
    """Four seeded trials: 0 the full model, 1 pruned float32, 2 all bf16, 3 all int8."""
    folder = tmp_path_factory.mktemp("artifacts")
    study = study_writer(folder, space={"heads": {"choices": [1, 2, 4]}, "ffn": {"choices": [64, 128, 256]},
                                        "bits": [32, 16, 8], "importance": ["magnitude"]},
                         search={"trials": 4, "seed": 0, "sampler": "random"})
    res = subprocess.run([sys.executable, "-m", "slimformer.searcher.cli", "search", str(study)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return study


def _reference(study, manifest):
    """The trial's PyTorch model rebuilt here, and its inputs."""
    from slimformer.methods import Plan
    from slimformer.searcher.config import load_study_config
    from slimformer.searcher.problem.workbench import Workbench

    bench = Workbench(load_study_config(study), log=lambda *_: None)
    return bench.build(Plan.from_dict(manifest["plan"])), bench.inputs


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("trial", [1, 3])
def test_artifact_runs_without_slimformer(searched, cli, tmp_path, fmt, trial):
    import torch

    out = tmp_path / "out"
    res = cli("export", searched, "--trial", trial, "--format", fmt, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert manifest["format"] == fmt and set(manifest["files"]) == listed
    assert "tokenizer.json" in manifest["files"] or "vocab.txt" in manifest["files"]
    assert manifest["outputs"][0] == "last_hidden_state"
    assert manifest["inputs"]["input_ids"] == ["batch", "sequence"]
    assert bool(manifest["int8_layers"]) == (trial == 3)
    check = manifest["verification"]
    assert check["metric"] == "spearman" and np.isfinite(check["quality"])
    assert "max abs difference of the mean-pooled embedding's direction vs PyTorch" in res.stderr
    assert check["masked"] and check["scored_relative_error"] <= check["tolerance"]

    model, inputs = _reference(searched, manifest)
    np.savez(tmp_path / "feed.npz", **{k: v.numpy() for k, v in inputs.items()})
    run = subprocess.run([sys.executable, "-c", LOADER, fmt, str(out), str(tmp_path / "feed.npz"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with torch.inference_mode():
        ref = model(**inputs).last_hidden_state.numpy()
    diff = float(np.abs(np.load(tmp_path / "y.npy") - ref).max())
    stored = check["max_abs_diff"]["last_hidden_state"]
    if trial == 1:  # float32: the same function
        assert diff < 1e-4 and stored < 1e-4
    else:  # int8: the artifact's own kernels, within the tolerance measured at export
        assert diff <= stored + 1e-5 and stored < INT8_TOLERANCE


def test_evaluate_checks_the_sha256(searched, cli, tmp_path, expect_user_error):
    out = tmp_path / "onnx"
    assert cli("export", searched, "--trial", 1, "--format", "onnx", "--out", out).returncode == 0
    res = cli("evaluate", out, "--study", searched, "--rounds", 3)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "speedup" in res.stdout and "(onnx)" in res.stdout
    blob = bytearray((out / "onnx" / "model.onnx").read_bytes())
    blob[-10] ^= 0xFF
    (out / "onnx" / "model.onnx").write_bytes(bytes(blob))
    expect_user_error(cli("evaluate", out, "--study", searched), "onnx/model.onnx", "sha256")


def test_bf16_trial_cannot_be_written_as_onnx(searched, cli, tmp_path, expect_user_error):
    expect_user_error(cli("export", searched, "--trial", 2, "--format", "onnx", "--out", tmp_path / "x"), "bits 16")
    assert not (tmp_path / "x").exists()
    res = cli("export", searched, "--trial", 2, "--format", "pytorch", "--out", tmp_path / "pt")
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("module,fmt,hint", [("onnxruntime", "onnx", "slimformer[onnx]"),
                                             ("openvino", "openvino", "slimformer[openvino]")])
def test_runtime_not_installed_is_exit_2(searched, tmp_path, expect_user_error, module, fmt, hint):
    block = (f"import sys; sys.modules[{module!r}] = None; from slimformer.searcher.cli import main; "
             "sys.exit(main())")
    res = subprocess.run([sys.executable, "-c", block, "export", str(searched), "--trial", "1", "--format", fmt,
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    expect_user_error(res, hint)
    assert not (tmp_path / "x").exists()


def test_the_check_bounds_the_median_relative_error():
    """An int8 artifact may move one element of the scored vector by a third of the largest value while the
    vector moves by far less, and miss by more on an example outside its calibrated ranges (the export of a
    finished quickstart did, at the same validation quality): the check bounds the median example's relative
    error, and still refuses vectors that point elsewhere."""
    import torch
    from slimformer.methods.export import ExportError
    from slimformer.searcher.devices.artifacts import (
        SCORED_TOLERANCE,
        ArtifactModel,
        check_scored,
        relative_errors,
    )

    ref = torch.full((3, 100), 0.1)
    ref[:, 0] = 1.0  # length sqrt(1 + 99 * 0.01) = 1.41
    close = ref.clone()
    close[:, 1] += 0.3  # 30% of the largest element, 21% of the length
    close[2] = -ref[2]  # and one example far off
    errors = relative_errors(close, ref)
    assert errors[:2] == pytest.approx([0.3 / (1.99 ** 0.5)] * 2, rel=1e-4) and errors[2] == pytest.approx(2.0)
    art = ArtifactModel(None, None)
    art.scored_errors = errors
    assert art.scored_rel_err == errors[0] < SCORED_TOLERANCE
    check_scored(art, "mean-pooled embedding")
    art.scored_errors = relative_errors(-ref, ref)  # every example points the other way
    with pytest.raises(ExportError, match="differs from the PyTorch model's by 200.0% of its length"):
        check_scored(art, "logits")


def test_a_sentence_embedding_is_checked_by_its_direction_as_cosine_scores_it():
    """An artifact whose embeddings are the PyTorch ones scaled (cosine similarity, the score, is unchanged)
    passes; one whose embeddings point elsewhere fails."""
    import torch
    from slimformer.methods.export import ExportError
    from slimformer.searcher.devices.artifacts import ArtifactModel, check_scored
    from slimformer.searcher.devices.runtime import ArtifactSession
    from slimformer.searcher.problem.tasks import SentenceSimilarity
    from transformers.modeling_outputs import BaseModelOutput

    torch.manual_seed(0)
    mask = torch.ones(4, 6, dtype=torch.long)
    ref = torch.randn(4, 6, 8)

    def checked(out):
        session = ArtifactSession(lambda feed: [out.numpy()], ["input_ids", "attention_mask"], ["last_hidden_state"])
        art = ArtifactModel(session, None, reference=lambda **_: BaseModelOutput(last_hidden_state=ref),
                            features=SentenceSimilarity().scored_features())
        art(input_ids=torch.ones_like(mask), attention_mask=mask)
        return art

    scaled = checked(1.6 * ref)  # 60% longer: a relative error of 60% on the raw embedding
    assert scaled.scored_rel_err == pytest.approx(0.0, abs=1e-5)
    check_scored(scaled, "mean-pooled embedding's direction")
    turned = checked(torch.randn(4, 6, 8))
    assert turned.scored_rel_err > 0.5
    with pytest.raises(ExportError, match="direction differs"):
        check_scored(turned, "mean-pooled embedding's direction")
