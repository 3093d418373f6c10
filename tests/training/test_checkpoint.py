"""Checkpoint files: bfloat16 optimizer moments that resume, pruning to keep_checkpoints,
completing a weights directory, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.errors import CheckpointError
from agentrl.training.checkpoint import (
    COMPLETE_MARKER,
    STATE_FILE,
    TrainerState,
    checkpoint_size,
    complete_step,
    describe_checkpoint,
    latest_checkpoint,
    load_state,
    optimizer_storage_dtype,
    rng_state,
    save_step,
    step_dir,
)


class SavedModel:
    """Stands in for a Hugging Face model/tokenizer: ``save_pretrained`` writes ``nbytes``."""

    def __init__(self, name: str, nbytes: int) -> None:
        self.name, self.nbytes = name, nbytes

    def save_pretrained(self, directory: Path, **_: object) -> None:
        (Path(directory) / self.name).write_bytes(b"\0" * self.nbytes)


MODEL, TOKENIZER = SavedModel("model.safetensors", 4000), SavedModel("tokenizer.json", 100)


def _trained_optimizer(steps: int = 3) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        layer(torch.randn(8, 64)).pow(2).mean().backward()
        optimizer.step()
    return layer, optimizer


def _state(step: int, optimizer: torch.optim.Optimizer) -> TrainerState:
    return TrainerState(step=step, optimizer=optimizer.state_dict(), scheduler={},
                        rng=rng_state())


def test_moments_stored_in_bfloat16_resume_close_and_halve_the_file(tmp_path: Path) -> None:
    layer, optimizer = _trained_optimizer()
    bf16 = save_step(tmp_path / "a", 3, MODEL, TOKENIZER, _state(3, optimizer), 2,
                     optimizer_storage_dtype("bfloat16"))
    fp32 = save_step(tmp_path / "b", 3, MODEL, TOKENIZER, _state(3, optimizer), 2,
                     optimizer_storage_dtype("float32"))
    stored = load_state(bf16).optimizer["state"][0]
    assert stored["exp_avg"].dtype == torch.bfloat16
    assert stored["step"].dtype == torch.float32 and stored["step"].item() == 3.0
    moments = 2 * sum(p.numel() for p in layer.parameters())
    half, full = checkpoint_size(bf16)[1], checkpoint_size(fp32)[1]
    assert half - full == pytest.approx(-2 * moments, rel=0.05)  # 2 bytes saved per value
    resumed = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    resumed.load_state_dict(load_state(bf16).optimizer)
    for param in layer.parameters():
        got, want = resumed.state[param], optimizer.state[param]
        assert got["exp_avg"].dtype == torch.float32  # cast back to the parameters' dtype
        assert torch.allclose(got["exp_avg"], want["exp_avg"], rtol=1e-2, atol=1e-8)
        assert torch.allclose(got["exp_avg_sq"], want["exp_avg_sq"], rtol=1e-2, atol=1e-12)
    exact = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    exact.load_state_dict(load_state(fp32).optimizer)
    assert torch.equal(exact.state[layer.weight]["exp_avg_sq"],
                       optimizer.state[layer.weight]["exp_avg_sq"])


def test_keeps_newest_checkpoints_and_the_served_weights_only(tmp_path: Path) -> None:
    _, optimizer = _trained_optimizer(1)
    leftover = tmp_path / "step-000002.tmp"  # a write killed mid-way by an earlier run
    leftover.mkdir(parents=True)
    for step in range(1, 8):
        state = _state(step, optimizer) if step % 3 == 0 else None
        save_step(tmp_path, step, MODEL, TOKENIZER, state, keep=1)
    # step 6 is the newest resumable checkpoint, step 7 the weights the services serve
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000006", "step-000007"]
    assert (tmp_path / "step-000006" / COMPLETE_MARKER).exists()
    assert not (tmp_path / "step-000007" / STATE_FILE).exists()
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 6)


def test_complete_step_makes_the_last_weights_resumable(tmp_path: Path) -> None:
    _, optimizer = _trained_optimizer(2)
    save_step(tmp_path, 4, MODEL, TOKENIZER, _state(4, optimizer), keep=1)
    save_step(tmp_path, 5, MODEL, TOKENIZER, None, keep=1)
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 4)
    path = complete_step(tmp_path, _state(5, optimizer), keep=1)
    assert path == step_dir(tmp_path, 5) and latest_checkpoint(tmp_path) == path
    assert load_state(path).step == 5
    assert [p.name for p in tmp_path.iterdir()] == ["step-000005"]  # keep=1: step 4 goes
    total, state_bytes = checkpoint_size(path)
    assert total == 4000 + 100 + state_bytes + len("5")
    text = describe_checkpoint(path)
    assert text.startswith("step-000005: ") and "model 4.1 KB" in text
    with pytest.raises(CheckpointError, match="no weights"):
        complete_step(tmp_path, _state(9, optimizer))
