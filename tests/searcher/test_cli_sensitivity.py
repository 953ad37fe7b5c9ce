"""`slimformer sensitivity`: per-layer scores and suggested bits on the tiny study (run in
process: a subprocess per call would spend most of its time importing)."""

from __future__ import annotations

import json

from slimformer.searcher.cli import main


def test_sensitivity_json_and_text(make_study, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    study = str(make_study())
    assert main(["sensitivity", study, "--json", "--bits", "8,4,2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["layer"] for row in out["layers"]] == [0, 1, 2, 3]
    assert all(row["sensitivity"] > 0 for row in out["layers"])
    assert [s["target"] for s in out["suggestions"]] == ["size of uniform 4-bit", "size of uniform 2-bit"]
    for sug in out["suggestions"]:
        assert len(sug["bits"]) == 4 and set(sug["bits"]) <= {8, 4, 2}
        assert sug["simulated"] is True
    assert out["suggestions"][0]["size_mb"] > out["suggestions"][1]["size_mb"]
    assert main(["sensitivity", study, "--bits", "8,4"]) == 0
    text = capsys.readouterr().out
    assert "layer 3:" in text and "SIMULATED" in text


def test_sensitivity_needs_calibration_and_valid_bits(make_study, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["sensitivity", str(make_study(data={"calibration": None}))]) == 2
    assert "data.calibration" in capsys.readouterr().err
    assert main(["sensitivity", str(make_study()), "--bits", "8,5"]) == 2
    assert "--bits" in capsys.readouterr().err
