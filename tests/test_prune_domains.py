"""The `domains` image data set and `pmoe experiment prune-domains` end to end at minimum size."""
from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from test_vision_data import fake_idx

from pmoe.cli import main
from pmoe.data.vision import make_image_dataset
from pmoe.data.vision.domains import DOMAINS
from pmoe.errors import PmoeError
from pmoe.experiments import prune_domains
from pmoe.experiments.prune_domains import PruneDomainsConfig, run_experiment

SIZES = {"train_per_domain": 60, "test_per_domain": 40}


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return str(fake_idx(tmp_path_factory.mktemp("fashion"), gz=False, per_class=10))  # 100 train, 100 test


def test_domains_have_one_shape_disjoint_labels_and_domain_ids(idx_dir):
    ds = make_image_dataset("domains", "train", idx_dir, **SIZES)
    assert ds.images.shape == (4 * 60, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 10 + 10 + 2 + 2 and ds.classes[10].startswith("inverted:")
    assert torch.equal(ds.groups, ds.attributes["domain"])
    for d, (lo, hi) in enumerate([(0, 10), (10, 20), (20, 22), (22, 24)]):
        labels = ds.labels[ds.attributes["domain"] == d]
        assert len(labels) == 60 and lo <= int(labels.min()) and int(labels.max()) < hi
    fashion, inverted = (ds.images[ds.attributes["domain"] == d] for d in (0, 1))
    assert float(inverted.float().mean()) > 128 > float(fashion.float().mean())  # white vs dark background
    again = make_image_dataset("domains", "train", idx_dir, **SIZES)
    assert torch.equal(ds.images, again.images) and torch.equal(ds.labels, again.labels)  # seeded
    other = make_image_dataset("domains", "train", idx_dir, **SIZES, seed=1)
    assert not torch.equal(ds.images, other.images)
    test = make_image_dataset("domains", "test", idx_dir, **SIZES)
    assert len(test) == 4 * 40 and not torch.equal(test.images[-40:], ds.images[-40:])


def test_one_domain_is_relabelled_and_keeps_its_domain_id(idx_dir):
    mix = make_image_dataset("domains", "test", idx_dir, **SIZES)
    one = make_image_dataset("domains", "test", idx_dir, **SIZES, domain="canvas")
    assert one.classes == mix.classes[20:22] and sorted(one.labels.unique().tolist()) == [0, 1]
    assert (one.attributes["domain"] == DOMAINS.index("canvas")).all()
    assert torch.equal(one.images, mix.images[mix.attributes["domain"] == 2])  # the mixture's canvases


@pytest.mark.parametrize("options,message", [({"domains": ["fashion", "mnist"]}, "domains must be distinct names"),
                                             ({"domain": "synthetic", "domains": ["fashion"]}, "domain must be one"),
                                             ({"train_per_domain": 70000}, "train_per_domain must lie"),
                                             ({"canvas_grid": 1}, "canvas_grid must be")])
def test_bad_domain_options_are_refused(idx_dir, options, message):
    with pytest.raises(PmoeError, match=message):
        make_image_dataset("domains", "train", idx_dir, **options)


@pytest.mark.parametrize("field,value,message", [("post_steps", -1, "post_steps must be >= 0"),
                                                 ("epochs", 0, "epochs=0: must be >= 1"),
                                                 ("lr", float("inf"), "lr must be > 0 and finite"),
                                                 ("calib_samples", 0, "calib_samples=0: must be >= 1")])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(PmoeError, match=re.escape(message)):
        PruneDomainsConfig(**{field: value})


@pytest.mark.parametrize("flags,message", [(["--task", "nowhere"], "task must be a domain"),
                                           (["--models", "vit-tiny"], "not a vision preset with MoE layers"),
                                           (["--methods", "magic"], "methods must be names"),
                                           (["--finetune-lr", "-0.1"], "finetune_lr must be > 0"),
                                           (["--finetune-lr", "nan"], "finetune_lr must be > 0")])
def test_bad_flags_are_one_error_line(tmp_path, capsys, flags, message):
    assert main(["experiment", "prune-domains", "--quick", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pmoe experiment: error: ") and message in err[0]
    assert not (tmp_path / "r" / "runs").exists()


def tiny(idx_dir: str) -> PruneDomainsConfig:
    return PruneDomainsConfig(models=["vit-moe-tiny"], seeds=1, task="synthetic",
                              data={**SIZES, "domains": ["fashion", "synthetic"]}, data_dir=idx_dir, epochs=1,
                              batch_size=30, finetune_steps=2, pruned=[2, 6],
                              methods=["router-norm-change", "random", "frequency"], post_steps=1, calib_samples=20,
                              device="cpu")


def test_task_fine_tune_is_the_official_sgd_or_the_presets_adamw():
    sgd = PruneDomainsConfig().fit_config("vit-moe-tiny", seed=0, finetune=True)
    o = sgd.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.clip_norm) == ("sgd", 0.01, 0.9, 0.0, 10.0)
    assert sgd.max_steps == 150 and not sgd.augment
    adamw = PruneDomainsConfig(finetune_optimizer="adamw").fit_config("vit-moe-tiny", seed=0, finetune=True).optim
    preset = PruneDomainsConfig().fit_config("vit-moe-tiny", seed=0, finetune=False).optim  # the tiny recipe's AdamW
    assert (adamw.name, adamw.lr, adamw.weight_decay, adamw.clip_norm) == ("adamw", 3e-4, preset.weight_decay,
                                                                           preset.clip_norm)
    with pytest.raises(PmoeError, match="finetune_optimizer must be one of"):
        PruneDomainsConfig(finetune_optimizer="lion")


def test_experiment_end_to_end_report_is_consistent(tmp_path, idx_dir):
    cfg = tiny(idx_dir)
    summary = run_experiment(cfg, tmp_path, workers=1, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["runs"] == len(results["runs"]) == 1
    r = results["runs"][0]
    assert r["unpruned_accuracy"] == r["finetuned_accuracy"]  # the sweep's baseline is the fine-tuned model
    mass = torch.tensor(r["mass"])  # (layers, domains, experts)
    assert mass.shape == (2, 2, 8) and torch.allclose(mass.sum(-1), torch.ones(2, 2))
    assert r["top"] == 4 and all(0.5 <= s <= 1 for s in r["top_share"])  # top 4 of 8 hold at least their share
    assert len(r["delta"]) == 2 and all(len(d) == 8 for d in r["delta"])
    assert sorted((p["method"], p["pruned"]) for p in r["points"]) == sorted(
        (m, p) for m in cfg.methods for p in cfg.pruned)
    for p in r["points"]:
        assert all(len(kept) == 8 - p["pruned"] for kept in p["kept"]) and 0 <= p["accuracy_finetuned"] <= 1
        assert 0 <= r["overlap"][p["method"]][str(p["pruned"])] <= 1
    for png in ("routing_vit-moe-tiny.png", "accuracy_vit-moe-tiny.png", "accuracy_finetuned_vit-moe-tiny.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "results.md").read_text()
    assert "| 6 of 8 |" in table and "V-MoE-B/16, CIFAR-10" in table
    acc = {(p["method"], p["pruned"]): p["accuracy"] for p in r["points"]}
    for m in ("random", "frequency"):  # Δ's paired difference to each criterion, one seed: the difference itself
        d = acc["router-norm-change", 6] - acc[m, 6]
        assert f"{d:+.3f} ± 0.000 ({int(d > 0)}/1) |" in table.split("Δ minus")[1].split(f"| {m} |")[1].split("\n")[0]
    # Run again: every finished pipeline is read back; other settings are refused.
    assert run_experiment(cfg, tmp_path, workers=1, progress=False)["report"] == summary["report"]
    with pytest.raises(PmoeError, match="other settings"):
        run_experiment(replace(cfg, post_steps=2), tmp_path, workers=1, progress=False)


def test_e3_prunes_only_counts_its_members_share():
    assert PruneDomainsConfig().counts("e3-tiny") == [2, 4, 6]
    assert PruneDomainsConfig().counts("vit-moe-tiny") == [2, 3, 4, 5, 6, 7]
    assert prune_domains.QUICK.seeds == 2 and prune_domains.FULL.seeds == 5
