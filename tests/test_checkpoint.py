import pytest
import torch
from torch import nn

from locodiff.errors import CheckpointError
from locodiff.train.checkpoint import (
    CheckpointState, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint,
)
from locodiff.train.ema import EMA


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()
    return m, opt


def test_roundtrip_restores_weights_and_optimizer(tmp_path):
    m, opt = _model_and_opt()
    save_checkpoint(tmp_path, m, m, opt, CheckpointState(64, 1, "abc"))
    m2, opt2 = _model_and_opt(seed=1)
    meta = load_checkpoint(latest_checkpoint(tmp_path), m2, None, opt2)
    assert meta["images_seen"] == 64 and meta["config_hash"] == "abc"
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)


def test_pruning_keeps_newest(tmp_path):
    m, opt = _model_and_opt()
    for n in (64, 128, 192):
        save_checkpoint(tmp_path, m, m, opt, CheckpointState(n, n // 64, "h"), keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt-0000000128", "ckpt-0000000192"]


def test_mismatched_architecture_and_corruption_are_clear_errors(tmp_path):
    m, opt = _model_and_opt()
    ckpt = save_checkpoint(tmp_path, m, m, opt, CheckpointState(64, 1, "h"))
    other = nn.Sequential(nn.Linear(3, 8))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        load_checkpoint(ckpt, other)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable or corrupted"):
        load_checkpoint(ckpt, m)


def test_ema_halflife():
    m = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(m.weight)
    ema = EMA(m, halflife_images=100)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m, batch_images=100)  # one half-life: halfway to the new value
    assert torch.allclose(ema.model.weight, torch.tensor([[0.5]]))
