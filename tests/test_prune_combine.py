"""`pmoe prune-combine`: mean ± std over seeds of prune-sweep reports, against hand-worked numbers."""
import json

import pytest

from pmoe.cli import main


def sweep(folder, accs: dict, base: float, ratios=(0.5,), steps: int = 10):
    """A results.json as `prune_sweep` writes it: accs[(method, ratio)] = (after pruning, after the fine-tune)."""
    folder.mkdir()
    cfg = {"methods": sorted({m for m, _ in accs}), "ratios": list(ratios), "mode": "zero", "seed": 0,
           "calib_samples": 256, "finetune": {"steps": steps}}
    points = [{"method": m, "ratio": r, "accuracy": a, "accuracy_finetuned": f} for (m, r), (a, f) in accs.items()]
    (folder / "results.json").write_text(json.dumps({"config": cfg, "unpruned": {"accuracy": base},
                                                     "points": points}))
    return str(folder)


def test_mean_and_sample_std_over_sweeps(tmp_path, capsys):
    a = sweep(tmp_path / "a", {("random", 0.5): (0.6, 0.7), ("router-norm-change", 0.5): (0.9, 0.9)}, 0.9)
    b = sweep(tmp_path / "b", {("random", 0.5): (0.8, 0.9), ("router-norm-change", 0.5): (0.9, 1.0)}, 1.0)
    assert main(["prune-combine", a, b, "--out", str(tmp_path / "c"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    points = {p["method"]: p for p in out["points"]}
    assert points["random"]["accuracy"] == pytest.approx([0.7, 0.1414213], abs=1e-6)  # std of {0.6, 0.8}: 0.1·√2
    assert points["router-norm-change"]["accuracy"] == pytest.approx([0.9, 0.0])
    assert points["router-norm-change"]["accuracy_finetuned"] == pytest.approx([0.95, 0.0707107], abs=1e-6)
    assert out["unpruned"] == pytest.approx([0.95, 0.0707107], abs=1e-6)
    table = (tmp_path / "c" / "results.md").read_text()
    assert "| 0.5 | 0.700 ± 0.141 → 0.800 ± 0.141 | 0.900 ± 0.000 → 0.950 ± 0.071 |" in table
    for name in ("accuracy_vs_ratio.png", "accuracy_finetuned_vs_ratio.png"):
        assert (tmp_path / "c" / name).read_bytes()[:4] == b"\x89PNG"


def test_refuses_other_settings_a_missing_report_and_one_sweep(tmp_path, capsys):
    a = sweep(tmp_path / "a", {("random", 0.5): (0.6, 0.7)}, 0.9)
    b = sweep(tmp_path / "b", {("random", 0.25): (0.6, 0.7)}, 0.9, ratios=(0.25,))
    (tmp_path / "empty").mkdir()
    cases = [([a, b], "was swept with other settings than"), ([a, str(tmp_path / "empty")], "no results.json in it"),
             ([a], "at least two sweep folders"), ([a, a + "/"], "each sweep folder counts once")]
    for dirs, message in cases:
        assert main(["prune-combine", *dirs, "--out", str(tmp_path / "c")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["points"][0].update(accuracy=float("nan")), "accuracy of point (random, ratio 0.5) must be a number"),
    (lambda r: r["points"][0].update(accuracy=7.5), "must be a number in [0, 1], got 7.5"),
    (lambda r: r["points"][0].update(accuracy_finetuned="high"), "accuracy_finetuned of point (random, ratio 0.5)"),
    (lambda r: r.update(unpruned=None), "unpruned.accuracy must be a number in [0, 1], got None"),
    (lambda r: r["config"].update(ratios=["half"]), "config.ratios must be numbers"),
    (lambda r: r["config"]["finetune"].update(steps=-3), "config.finetune.steps must be an integer >= 0"),
    (lambda r: r.update(points=[]), "points must cover every method and ratio"),
    (lambda r: r.clear(), "is not a prune-sweep result"),
])
def test_malformed_sweep_results_are_refused_by_field(tmp_path, capsys, edit, message):
    a = sweep(tmp_path / "a", {("random", 0.5): (0.6, 0.7)}, 0.9)
    b = sweep(tmp_path / "b", {("random", 0.5): (0.8, 0.9)}, 1.0)
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    edit(results)
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))  # NaN as the bare constant json reads back
    assert main(["prune-combine", a, b, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(tmp_path / "b") in err[0], err
    assert not (tmp_path / "c").exists()
