"""`combine_sweeps`: mean ± std over seeds of several `prune_sweep` reports of the same settings
(`pmoe prune-combine`); writes results.json, PNG plots with std bands and results.md."""
from __future__ import annotations

import json
from pathlib import Path

from pmoe.errors import PmoeError, check
from pmoe.io import write_json, write_text
from pmoe.outputs import output_folder
from pmoe.reports import line_plot, markdown_table, mean_std

SHARED = ("methods", "ratios", "mode", "calib_samples")  # sweep settings the combined reports must share


def read_sweep(path: str | Path) -> dict:
    """The results.json of the `prune_sweep` report folder `path`."""
    file = Path(path) / "results.json"
    check(file.is_file(), f"{path} is not a prune-sweep report folder: no results.json in it")
    try:
        res = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise PmoeError(f"{file} is not valid JSON ({e}); re-run the sweep") from None
    check(isinstance(res, dict) and {"config", "unpruned", "points"} <= set(res), f"{file} is not a prune-sweep "
          f"result (needs an object with config, unpruned and points)")
    _check_sweep(res, file)
    return res


def _is_accuracy(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1  # NaN fails


def _check_sweep(res: dict, file: Path) -> None:
    """Refuse a results.json whose fields that combining reads have other types or values than a sweep writes."""
    def need(ok: bool, what: str, value: object) -> None:
        check(ok, f"{file}: {what}, got {value!r}; re-run the sweep")

    cfg, unpruned, points = res["config"], res["unpruned"], res["points"]
    need(isinstance(cfg, dict) and {*SHARED, "finetune"} <= set(cfg), f"config must hold {', '.join(SHARED)} and "
         "finetune", cfg if not isinstance(cfg, dict) else sorted(cfg))
    need(isinstance(cfg["methods"], list) and all(isinstance(m, str) for m in cfg["methods"]),
         "config.methods must be a list of names", cfg["methods"])
    need(isinstance(cfg["ratios"], list) and all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                                 for r in cfg["ratios"]),
         "config.ratios must be numbers", cfg["ratios"])
    steps = cfg["finetune"].get("steps") if isinstance(cfg["finetune"], dict) else None
    need(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0,
         "config.finetune.steps must be an integer >= 0", steps)
    need(isinstance(unpruned, dict) and _is_accuracy(unpruned.get("accuracy")),
         "unpruned.accuracy must be a number in [0, 1]", unpruned)
    keys = ["accuracy"] + (["accuracy_finetuned"] if steps else [])
    need(isinstance(points, list) and all(isinstance(p, dict) for p in points), "points must be a list of objects",
         points)
    for p in points:
        for k in keys:
            need(_is_accuracy(p.get(k)), f"{k} of point ({p.get('method')}, ratio {p.get('ratio')}) must be a number "
                                         "in [0, 1]", p.get(k))
    have = {(p.get("method"), p.get("ratio")) for p in points}
    missing = [(m, r) for m in cfg["methods"] for r in cfg["ratios"] if (m, r) not in have]
    need(not missing, "points must cover every method and ratio of config (missing shown)", missing)


def _shared(cfg: dict) -> dict:
    return {**{k: cfg[k] for k in SHARED}, "finetune_steps": cfg["finetune"]["steps"]}


def combine_sweeps(sweep_dirs: list[str | Path], out_dir: str | Path, overwrite: bool = False) -> dict:
    """Mean ± std over the sweeps in `sweep_dirs` (e.g. one per seed) of the accuracy of every method and ratio,
    after pruning and after the post-pruning fine-tune; the report goes to `out_dir`."""
    check(len(sweep_dirs) >= 2, f"give at least two sweep folders to combine, got {len(sweep_dirs)}")
    folders = [Path(d).resolve() for d in sweep_dirs]
    twice = [str(d) for i, d in enumerate(sweep_dirs) if folders[i] in folders[:i]]
    check(not twice, f"each sweep folder counts once; given twice: {', '.join(twice)}")
    with output_folder(out_dir, sweep_dirs, overwrite) as tmp:
        return _combine([read_sweep(d) for d in sweep_dirs], sweep_dirs, out_dir, tmp)


def _combine(sweeps: list[dict], sweep_dirs: list[str | Path], out_dir: str | Path, tmp: Path) -> dict:
    """`combine_sweeps`' work, writing the report into `tmp`; the summary."""
    ref = _shared(sweeps[0]["config"])
    for d, s in zip(sweep_dirs[1:], sweeps[1:]):
        diff = [f"{k}: {ref[k]!r} vs {v!r}" for k, v in _shared(s["config"]).items() if v != ref[k]]
        check(not diff, f"{d} was swept with other settings than {sweep_dirs[0]}: {'; '.join(diff)}")
    keys = ["accuracy"] + (["accuracy_finetuned"] if ref["finetune_steps"] else [])
    base = mean_std([s["unpruned"]["accuracy"] for s in sweeps])
    stats = {(m, r, k): mean_std([next(p[k] for p in s["points"] if p["method"] == m and p["ratio"] == r)
                                  for s in sweeps]) for m in ref["methods"] for r in ref["ratios"] for k in keys}
    fmt = lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}"  # noqa: E731
    rows = [["0 (fine-tuned)"] + [fmt(base)] * len(ref["methods"])]
    rows += [[f"{r:g}"] + [" → ".join(fmt(stats[m, r, k]) for k in keys) for m in ref["methods"]]
             for r in ref["ratios"]]
    note = f" (after pruning → after {ref['finetune_steps']} fine-tune steps)" if len(keys) > 1 else ""
    table = markdown_table(["pruned"] + [f"{m}{note}" for m in ref["methods"]], rows)
    points = [{"method": m, "ratio": r, **{k: stats[m, r, k] for k in keys}} for m in ref["methods"]
              for r in ref["ratios"]]
    for k in keys:
        series = {m: ([0.0, *ref["ratios"]], [base[0]] + [stats[m, r, k][0] for r in ref["ratios"]],
                      [base[1]] + [stats[m, r, k][1] for r in ref["ratios"]]) for m in ref["methods"]}
        line_plot(tmp / f"{k}_vs_ratio.png", series, "experts pruned per layer", "test accuracy",
                  f"mean ± std over {len(sweeps)} sweeps" + (", after the fine-tune" if k != "accuracy" else ""),
                  hline=base[0])
    write_json(tmp / "results.json", {"sweeps": [str(d) for d in sweep_dirs], "settings": ref,
                                      "unpruned": base, "points": points})
    write_text(tmp / "results.md", f"# Expert pruning, mean ± std over {len(sweeps)} sweeps\n\n"
               + "".join(f"- `{d}`\n" for d in sweep_dirs) + f"\n{table}")
    return {"out": str(out_dir), "sweeps": len(sweeps), "unpruned": base, "points": points, "report": table}
