"""The one training loop (mclcore.train.loop) on a toy two-phase study: seconds on a CPU."""
import math
import os

import pytest
import torch
from dataclasses import dataclass

from mclcore.train import loop


@dataclass
class ToyConfig:
    seed: int = 0
    device: str = "cpu"
    log_every: int = 2
    ckpt_every: int = 3
    steps_a: int = 5
    steps_b: int = 4
    lr: float = 0.05
    blow_up_at: int = -1


class Toy:
    """Phase "a" fits a linear layer, phase "b" a second one on top; batches and noise from the step context."""

    PHASES = ("a", "b")

    def build_model(self, cfg):
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))

    def phases(self, cfg):
        return [("a", cfg.steps_a), ("b", cfg.steps_b)]

    def setup(self, model, cfg, device):
        return {"w": torch.tensor([[1.0], [-2.0], [0.5]]), "seen": []}

    def trainable(self, model, cfg, phase):
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(model[0 if phase == "a" else 1].parameters())
        for p in params:
            p.requires_grad_(True)
        return params

    def optimizers(self, model, cfg, phase, params):
        opt = torch.optim.Adam(params, lr=cfg.lr)
        return [opt], [torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))]

    def train_step(self, model, cfg, phase, step, data, ctx):
        x = torch.from_numpy(ctx.rng.normal(size=(8, 3))).float()
        y = x @ data["w"] + 0.1 * torch.randn(8, 1, generator=ctx.generator)
        loss = (model(x) - y).pow(2).mean()
        if step == cfg.blow_up_at:
            loss = loss * float("nan")
        data["seen"].append((phase, step))
        return {"loss": loss}


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_deterministic_and_resume_after_any_stop_equals_one_run(tmp_path):
    ref, _, _, done = loop.train(Toy(), ToyConfig(), str(tmp_path / "ref"), progress=False, log=False)
    again, _, _, _ = loop.train(Toy(), ToyConfig(), str(tmp_path / "again"), progress=False, log=False)
    assert done and all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(again)))
    for stop in (1, 3, 5, 7):                                    # inside a, at a checkpoint, at the phase edge, in b
        out = str(tmp_path / f"stop{stop}")
        model, _, _, finished = loop.train(Toy(), ToyConfig(), out, stop_after=stop, progress=False, log=False)
        assert not finished
        counted = []
        model, _, data, finished = loop.train(Toy(), ToyConfig(), out, progress=False, log=False,
                                              on_step=counted.append)
        assert finished and counted[0] == stop and sum(counted) == 9
        assert data["seen"][0] == (("a", stop) if stop < 5 else ("b", stop - 5))
        assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(model))), stop
    state = loop.load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert state["done"] == ["a", "b"] and state["config"]["steps_b"] == 4


def test_only_the_phase_parameters_move_and_config_json_is_written(tmp_path):
    torch.manual_seed(0)
    init = _weights(Toy().build_model(ToyConfig()))
    model, _, _, _ = loop.train(Toy(), ToyConfig(steps_b=0), str(tmp_path), progress=False, log=True)
    after = _weights(model)
    assert not torch.equal(init[0], after[0]) and torch.equal(init[2], after[2])
    assert os.path.exists(tmp_path / "config.json") and os.listdir(tmp_path / "tb")


def test_non_finite_loss_stops_naming_phase_and_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"toy/a step 2: non-finite loss"):
        loop.train(Toy(), ToyConfig(blow_up_at=2), None, progress=False, label="toy")


def test_a_changed_config_on_resume_warns_or_is_refused(tmp_path, capsys):
    out = str(tmp_path)
    loop.train(Toy(), ToyConfig(), out, stop_after=2, progress=False, log=False)
    with pytest.raises(ValueError, match=r"lr: saved 0.05 vs given 0.1"):
        loop.train(Toy(), ToyConfig(lr=0.1), out, progress=False, log=False, config_mismatch="error")
    _, cfg, _, _ = loop.train(Toy(), ToyConfig(lr=0.1), out, progress=False, log=False)
    assert cfg.lr == 0.05 and "ignoring differences" in capsys.readouterr().err


def test_a_corrupt_checkpoint_names_the_file(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.pt: not a readable checkpoint"):
        loop.train(Toy(), ToyConfig(), str(tmp_path), progress=False, log=False)


def test_step_streams_depend_only_on_seed_phase_and_step():
    a = loop.StepContext(1, 0, 5, torch.device("cpu"))
    b = loop.StepContext(1, 0, 5, torch.device("cpu"))
    assert a.rng.integers(0, 1 << 30) == b.rng.integers(0, 1 << 30)
    assert a.generator is a.generator                           # one stream per step, shared by its hooks
    assert torch.equal(torch.randn(3, generator=a.generator), torch.randn(3, generator=b.generator))
    c = loop.StepContext(1, 1, 5, torch.device("cpu"))
    assert not math.isclose(torch.randn(1, generator=c.generator).item(),
                            torch.randn(1, generator=loop.StepContext(1, 0, 5, torch.device("cpu")).generator).item())


def test_resolve_device_names_a_bad_device():
    assert loop.resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="--device"):
        loop.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            loop.resolve_device("cuda")


def test_train_seconds_sum_over_resumes_and_stay_unknown_for_old_checkpoints(tmp_path, monkeypatch):
    """The checkpoint's train_seconds is the wall time of the calls that made its state, summed over resumes (a
    fake clock that advances 10 s per step); a checkpoint without the record (older runs) keeps it unknown."""
    clock = {"t": 100.0}
    monkeypatch.setattr(loop, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock["t"])}))

    class Ticking(Toy):
        def train_step(self, model, cfg, phase, step, data, ctx):
            clock["t"] += 10.0
            return super().train_step(model, cfg, phase, step, data, ctx)

    def seconds(out):
        return loop.load_checkpoint(os.path.join(out, "checkpoint.pt"))["train_seconds"]

    one = str(tmp_path / "one")
    loop.train(Ticking(), ToyConfig(), one, progress=False, log=False)
    split = str(tmp_path / "split")
    loop.train(Ticking(), ToyConfig(), split, stop_after=4, progress=False, log=False)
    assert seconds(split) == 40.0
    clock["t"] += 1000.0                                 # time between the calls is not training
    loop.train(Ticking(), ToyConfig(), split, progress=False, log=False)
    assert seconds(one) == seconds(split) == 90.0
    old = str(tmp_path / "old")
    loop.train(Ticking(), ToyConfig(), old, stop_after=4, progress=False, log=False)
    state = loop.load_checkpoint(os.path.join(old, "checkpoint.pt"))
    del state["train_seconds"]
    loop.save_checkpoint(os.path.join(old, "checkpoint.pt"), state)
    loop.train(Ticking(), ToyConfig(), old, progress=False, log=False)
    assert seconds(old) is None
