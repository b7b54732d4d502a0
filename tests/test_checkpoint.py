import pytest
import torch
from torch import nn

from locodiff.errors import CheckpointError
from locodiff.checkpoints import CheckpointState, checkpoint_problem, latest_checkpoint, list_checkpoints, load_checkpoint, load_extra, save_checkpoint
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


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_used(tmp_path, capsys):
    m, opt = _model_and_opt()
    older = save_checkpoint(tmp_path, m, m, opt, CheckpointState(64, 1, "h"))
    newest = save_checkpoint(tmp_path, m, m, opt, CheckpointState(128, 2, "h"))
    data = bytearray((newest / "ema.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit: same size, other checksum
    (newest / "ema.safetensors").write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) == older
    err = capsys.readouterr().err
    assert "ckpt-0000000128 is damaged (ema.safetensors differs" in err and "fell back" in err
    assert (tmp_path / "checkpoints" / "damaged-ckpt-0000000128" / "ema.safetensors").is_file()  # evidence kept
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-0000000064"]


def test_a_checkpoint_missing_a_file_is_damaged_and_none_left_means_none(tmp_path, capsys):
    m, opt = _model_and_opt()
    ckpt = save_checkpoint(tmp_path, m, m, opt, CheckpointState(64, 1, "h"))
    assert checkpoint_problem(ckpt) is None
    (ckpt / "optimizer.safetensors").unlink()
    assert checkpoint_problem(ckpt) == "optimizer.safetensors is missing"
    assert latest_checkpoint(tmp_path) is None
    assert "damaged" in capsys.readouterr().err


def test_extra_state_round_trips(tmp_path):
    m, opt = _model_and_opt()
    gen = torch.Generator().manual_seed(3)
    ckpt = save_checkpoint(tmp_path, m, None, opt, CheckpointState(8, 1, "d"), extra={"generator": gen.get_state()})
    restored = torch.Generator()
    restored.set_state(load_extra(ckpt)["generator"])
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=gen))
    assert not (ckpt / "ema.safetensors").exists() and checkpoint_problem(ckpt) is None
