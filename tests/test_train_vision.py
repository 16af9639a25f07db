import copy
import dataclasses
import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pmoe.checkpoints import load_checkpoint
from pmoe.cli import main
from pmoe.data.vision import Augment, ImageBatches, ImageDataset
from pmoe.errors import PmoeError
from pmoe.train import FitConfig, OptimConfig, evaluate_images, fit, make_scheduler
from pmoe.runs.images import build_for_data, load_for_data


pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 64, classes: int = 4, side: int = 16, seed: int = 0, groups: bool = False) -> ImageDataset:
    """Random 1-channel images, labels cycling through the classes; 3 groups cycling too, if asked."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, side, side), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageDataset(x, y, [str(c) for c in range(classes)], (0.5,), (0.25,),
                        groups=torch.arange(n) % 3 if groups else None)


def model(name: str, ds: ImageDataset, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_for_data(name, ds)


def params(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


CFG = dict(batch_size=16, device="cpu", eval_batch_size=64)


@pytest.mark.parametrize("name,optim", [
    ("vit-moe-tiny", OptimConfig(name="adamw", lr=1e-3, warmup_steps=3, clip_norm=1.0)),  # routing noise, AdamW
    ("wrn-pmoe-tiny", OptimConfig(warmup_steps=2)),  # batch norm buffers, SGD momentum
])
def test_resume_after_a_kill_gives_bit_identical_weights(tmp_path, name, optim):
    tr, te = images(), images(16, seed=1)
    cfg = FitConfig(epochs=2, optim=optim, **CFG)
    straight = model(name, tr)
    h_straight = fit(straight, tr, te, cfg, progress=False)

    class Killed(Exception):
        pass

    def kill(rec):
        raise Killed

    with pytest.raises(Killed):  # killed after the checkpoint of epoch 1
        fit(model(name, tr), tr, te, cfg, out_dir=tmp_path, on_epoch=kill, progress=False)
    resumed = model(name, tr, seed=123)  # other initial weights and RNG: all must come from the checkpoint
    h_resumed = fit(resumed, tr, te, cfg, out_dir=tmp_path, resume=True, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["train_loss"] for r in h_resumed] == [r["train_loss"] for r in h_straight]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["step"] == 8
    assert {"lr", "train_accuracy", "eval_accuracy", "images_per_second", "seconds"} <= lines[0].keys()


def test_a_compiled_training_step_trains_the_weights_of_the_eager_one():
    """compile=True: the same steps (patch routing: no random draws inside the compiled graph), weights equal up to
    the compiled kernels' rounding; evaluation (eager) sees the same model."""
    ds, cfg = images(64), FitConfig(epochs=2, optim=OptimConfig("adamw", lr=1e-3), augment=False, **CFG)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        m = build_for_data("vit-moe-tiny", ds, {"router": "patch"})
        history = fit(m, ds, images(32, seed=1), dataclasses.replace(cfg, compile=compiled), progress=False)
        runs.append((params(m), history[-1]))
    (eager, h_eager), (comp, h_comp) = runs
    assert not torch.equal(eager, params(model("vit-moe-tiny", ds)))  # it trained
    torch.testing.assert_close(comp, eager, rtol=1e-3, atol=1e-4)  # AdamW magnifies rounding on gradients near 0
    assert h_comp["eval_accuracy"] == h_eager["eval_accuracy"]


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = make_scheduler(opt, OptimConfig(lr=0.4, warmup_steps=3), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.4 * (s + 1) / 3 for s in range(3)] + [0.4 * 0.5 * (1 + math.cos(math.pi * (s - 3) / 7))
                                                        for s in range(3, 10)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[3] == pytest.approx(0.4) and lrs[-1] < 0.4 * 0.06
    const = make_scheduler(opt := torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4),
                           OptimConfig(lr=0.4, schedule="constant", warmup_steps=2), total_steps=10)
    got = []
    for _ in range(5):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        const.step()
    assert got == pytest.approx([0.2, 0.4, 0.4, 0.4, 0.4])


def test_clipping_bounds_the_update_to_the_clip_norm():
    tr = images(16)
    plain = OptimConfig(lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")
    moved = {}
    for clip in (None, 1e-3):
        m = model("vit-tiny", tr)
        before = params(m)
        fit(m, tr, None, FitConfig(epochs=1, augment=False, optim=OptimConfig(**{**vars(plain), "clip_norm": clip}),
                                   **CFG), progress=False)
        moved[clip] = (params(m) - before).norm().item()  # = lr * |clipped gradient|
    assert moved[None] > 1e-2
    assert moved[1e-3] == pytest.approx(1e-3, rel=1e-4)


def first_batch(ds: ImageDataset, cfg: FitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch `fit` draws."""
    return next(iter(ImageBatches(ds, cfg.batch_size, shuffle=True, augment=Augment(), seed=cfg.seed, drop_last=True)))


def test_objective_is_cross_entropy_plus_aux_loss():
    tr, cfg = images(16), FitConfig(epochs=1, seed=3, **CFG)
    m = model("vit-moe-tiny", tr)
    ref = copy.deepcopy(m).train()
    history = fit(m, tr, None, cfg, progress=False)
    x, y = first_batch(tr, cfg)
    torch.manual_seed(cfg.seed)  # the routing noise of the forward
    ce = F.cross_entropy(ref(x), y)
    aux = ref.aux_loss()
    assert aux.item() > 0
    assert history[0]["train_aux_loss"] == pytest.approx(aux.item(), rel=1e-5)
    assert history[0]["train_loss"] == pytest.approx((ce + aux).item(), rel=1e-6)


def test_e3_trains_on_the_mean_of_its_members_cross_entropies():
    tr, cfg = images(16), FitConfig(epochs=1, **CFG)
    m = model("e3-tiny", tr)
    ref = copy.deepcopy(m).train()
    history = fit(m, tr, None, cfg, progress=False)
    x, y = first_batch(tr, cfg)
    torch.manual_seed(cfg.seed)
    members = ref.forward_members(x)  # (B, M, C)
    member_ce = torch.stack([F.cross_entropy(members[:, i], y) for i in range(members.shape[1])]).mean()
    task = history[0]["train_loss"] - history[0]["train_aux_loss"]
    assert task == pytest.approx(member_ce.item(), rel=1e-5)
    ensemble_nll = F.cross_entropy(torch.logsumexp(members.log_softmax(-1), 1) - math.log(members.shape[1]), y)
    assert abs(task - ensemble_nll.item()) > 1e-4  # not the loss of the averaged prediction


def test_max_steps_stops_mid_epoch_with_a_final_eval_and_checkpoint(tmp_path):
    tr, te = images(), images(16, seed=1)
    history = fit(model("wrn-pmoe-tiny", tr), tr, te, FitConfig(epochs=5, max_steps=6, **CFG), out_dir=tmp_path,
                  progress=False)
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 4), (2, 6)] and "eval_accuracy" in history[-1]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["progress"] == {"epoch": 2, "step": 6, "total_steps": 6, "finished": True}
    assert history[-1]["lr"] < 0.1 * 0.1  # the cosine reaches ~0 at max_steps, not at 5 epochs


def test_eval_every_evaluates_and_checkpoints_every_kth_epoch_and_the_last(tmp_path):
    tr, te = images(), images(16, seed=1)
    saved = []  # the epoch of the checkpoint on disk after each epoch

    def on_epoch(rec: dict) -> None:
        path = tmp_path / "config.json"
        saved.append(json.loads(path.read_text())["progress"]["epoch"] if path.exists() else None)

    history = fit(model("wrn-tiny", tr), tr, te, FitConfig(epochs=5, eval_every=2, **CFG), out_dir=tmp_path,
                  on_epoch=on_epoch, progress=False)
    assert [("eval_accuracy" in r) for r in history] == [False, True, False, True, True]
    assert saved == [None, 2, 2, 4, 5]
    with pytest.raises(PmoeError, match="eval_every >= 1"):
        FitConfig(eval_every=0)


def test_bf16_autocast_path_and_evaluation_with_groups():
    tr, te = images(16), images(40, seed=1, groups=True)
    m = model("vit-moe-tiny", tr)
    history = fit(m, tr, te, FitConfig(epochs=1, cpu_bf16=True, **CFG), progress=False)
    assert math.isfinite(history[0]["train_loss"])
    ev = evaluate_images(m, te, batch_size=7)
    with torch.no_grad():
        pred = m(torch.stack([te[i][0] for i in range(len(te))])).argmax(-1)
    right = (pred == te.labels).float()
    assert ev["accuracy"] == pytest.approx(right.mean().item())
    by_group = {g: right[te.groups == g].mean().item() for g in range(3)}
    assert ev["group_accuracy"] == pytest.approx(by_group) and ev["worst_group_accuracy"] == min(by_group.values())


def test_fit_refuses_an_existing_run_and_changed_settings_on_resume(tmp_path):
    tr = images(32)
    fit(model("vit-tiny", tr), tr, None, FitConfig(epochs=1, **CFG), out_dir=tmp_path, progress=False)
    with pytest.raises(PmoeError, match="already holds a training run"):
        fit(model("vit-tiny", tr), tr, None, FitConfig(epochs=1, **CFG), out_dir=tmp_path, progress=False)
    with pytest.raises(PmoeError, match=r"fit.epochs: 1 -> 2"):
        fit(model("vit-tiny", tr), tr, None, FitConfig(epochs=2, **CFG), out_dir=tmp_path, resume=True,
            progress=False)
    with pytest.raises(PmoeError, match="nothing to resume"):
        fit(model("vit-tiny", tr), tr, None, FitConfig(epochs=1, **CFG), out_dir=tmp_path / "none", resume=True)


def test_fine_tuning_keeps_every_weight_but_a_head_for_other_classes(tmp_path):
    tr = images(32, classes=4)
    fit(model("wrn-pmoe-tiny", tr), tr, None, FitConfig(epochs=1, **CFG), out_dir=tmp_path, progress=False)
    parent, _ = load_checkpoint(tmp_path)
    for classes, head in ((4, "kept"), (3, "new")):
        child, info = load_for_data(tmp_path, images(32, classes=classes))
        assert info["head"] == head and child.head.out_features == classes
        assert info["sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
        for k, v in parent.state_dict().items():
            assert torch.equal(child.state_dict()[k], v) != (k.startswith("head.") and head == "new"), k
    with pytest.raises(PmoeError, match="1x16x16 images"):
        load_for_data(tmp_path, images(32, side=20))


# ---- CLI, on Fashion-MNIST subsets -----------------------------------------------------------------------------

FASHION = ["--samples", "40", "--test-samples", "20", "--epochs", "1", "--batch-size", "20", "--device", "cpu"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit")
    assert main(["train", "--model", "vit-moe-tiny", "--data", "fashion-mnist", *FASHION, "--out", str(out),
                 "--json"]) == 0
    return out


def test_cli_train_json_and_eval(vit_run, capsys):
    result = json.loads((vit_run / "config.json").read_text())["result"]
    assert {"test_accuracy", "train_accuracy", "epochs", "seconds", "params", "images_per_second"} <= result.keys()
    assert result["samples"] == 40 and result["test_samples"] == 20 and result["epochs"] == 1
    cfg = json.loads((vit_run / "config.json").read_text())
    assert cfg["model"]["in_channels"] == 1 and cfg["model"]["image_size"] == 28 and cfg["preset"] == "vit-moe-tiny"
    assert main(["eval", str(vit_run), "--json"]) == 0
    ev = last_json(capsys)
    assert ev["test_accuracy"] == result["test_accuracy"] and ev["params"] == result["params"]


def test_cli_finetune_replaces_the_head_and_records_the_parent(vit_run, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", str(vit_run), "--data", "fashion-spurious", "--data-opt", "num_samples=200", *FASHION,
            "--out", str(out), "--json"]
    assert main(args) == 0
    result = last_json(capsys)
    assert result["worst_group_accuracy"] <= result["test_accuracy"] and len(result["group_accuracy"]) == 4
    cfg = json.loads((out / "config.json").read_text())
    sha = hashlib.sha256((vit_run / "model.safetensors").read_bytes()).hexdigest()
    assert cfg["pretrained"]["sha256"] == sha and cfg["pretrained"]["head"] == "new"
    assert cfg["model"]["num_classes"] == 2
    assert main(["eval", str(out), "--json"]) == 0
    assert last_json(capsys)["worst_group_accuracy"] == result["worst_group_accuracy"]
    assert main(args[:-1] + ["--resume"]) == 0  # finished: a note, the result, status 0
    assert "had finished; nothing trained" in capsys.readouterr().err


def test_cli_finetune_of_a_theory_checkpoint(tmp_path, capsys):
    tiny = ["--samples", "30", "--test-samples", "40", "--epochs", "2"]
    main(["train", "--model", "pmoe", "-l", "2", "--n", "6", "--d", "12", *tiny, "--out", str(tmp_path / "a")])
    assert main(["finetune", str(tmp_path / "a"), "--data-seed", "1", *tiny, "--out", str(tmp_path / "b"),
                 "--json"]) == 0
    assert last_json(capsys)["model"] == "pmoe"
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["data"]["options"] == {"n": 6, "d": 12} and len(cfg["pretrained"]["sha256"]) == 64
    assert main(["eval", str(tmp_path / "b")]) == 0


@pytest.mark.parametrize("args,message", [
    (["train", "--model", "vit-tiny", "--data", "synthetic", "--out", "{tmp}/x"], "takes an image data set"),
    (["train", "--model", "pmoe", "--data", "fashion-mnist", "--out", "{tmp}/x"], "takes --data synthetic"),
    (["train", "--model", "pmoe", "--optimizer", "adamw", "--out", "{tmp}/x"], "--optimizer applies to vision"),
    (["train", "--model", "pmoe", "--compile", "--out", "{tmp}/x"], "--compile applies to vision"),
    (["train", "--model", "vit-tiny", "--resume", "--out", "{tmp}/missing"], "nothing to resume"),
    (["train", "--model", "wrn-pmoe-tiny", "--model-opt", "region=3", "--samples", "20", "--out", "{tmp}/x"],
     "region=3"),
    (["finetune", "{tmp}/missing", "--out", "{tmp}/x"], "does not exist"),
    (["finetune", "{vit}", "--data", "fashion-patches-image", "--data-opt", "num_samples=20", "--out", "{tmp}/x"],
     "1x112x112"),
    (["finetune", "{vit}", "--data", "synthetic", "--out", "{tmp}/x"], "holds a vision model"),
    (["finetune", "{vit}", "--out", "{vit}"], "is the input"),
])
def test_cli_bad_input_is_a_clear_error(vit_run, tmp_path, capsys, args, message):
    assert main([a.replace("{tmp}", str(tmp_path)).replace("{vit}", str(vit_run)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
