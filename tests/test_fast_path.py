"""The GPU fast path's options, checked for correctness on CPU: bf16 autocast, channels_last, compile."""
import pytest
import torch

from precond.data import synthetic
from precond.models import cnn, mlp
from precond.optim import build_optimizer
from precond.run.config import build_data, build_model, build_optimizer_from_settings, settings_from_config
from precond.run.loop import LoopSettings, train
from tests.conftest import read_metrics, read_summary, run_in_process
from tests.test_configs import _compose


class _Log:
    def __init__(self):
        self.records = []

    def log(self, record):
        self.records.append(record)


def _train(precision, steps=60):
    data = synthetic(task="classification", n_train=256, n_val=64, n_test=0, features=8, classes=3)
    torch.manual_seed(0)
    model = mlp(data.in_shape, data.num_outputs, widths=(16,))
    optimizer = build_optimizer(model.parameters(), "adam", lr=0.01)
    log = _Log()
    summary = train(model, optimizer, data, LoopSettings(steps=steps, batch_size=32, eval_every=20, precision=precision,
                                                           progress=False), log)
    return model, optimizer, summary, log.records


def test_bf16_autocast_trains_with_float32_weights_and_state_close_to_fp32():
    """bf16 changes the forward's rounding (so the losses differ from fp32) but not the weights' dtype,
    and training reaches the same place to bf16 accuracy."""
    model, optimizer, summary, records = _train("bf16")
    _, _, reference, ref_records = _train("fp32")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    assert records[0]["train/loss"] != ref_records[0]["train/loss"]  # autocast is really on
    assert summary["val/loss"] == pytest.approx(reference["val/loss"], rel=0.03)
    assert summary["status"] == "completed"


def test_channels_last_puts_images_and_conv_weights_in_nhwc_and_trains_as_nchw(tmp_path):
    cfg = _compose("model=cnn", "model.channels=[4,8]", "dataset=digits", "channels_last=true")
    settings = settings_from_config(cfg)
    data = build_data(settings)
    model = build_model(settings, data)
    assert data.x_train.is_contiguous(memory_format=torch.channels_last)
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 4 → 8 channels: unambiguous
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    build_optimizer_from_settings(settings, model)
    common = ["model=cnn", "model.channels=[4,8]", "dataset=digits", "steps=30", "eval_every=10",
              "target.metric=val/acc", "target.value=0.5"]
    for layout in ("true", "false"):
        assert run_in_process([*common, f"channels_last={layout}", f"hydra.run.dir={tmp_path / layout}"]) == 0
    nhwc, nchw = read_metrics(tmp_path / "true"), read_metrics(tmp_path / "false")
    for a, b in zip(nhwc, nchw):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
    assert read_summary(tmp_path / "true")["status"] == "completed"


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_model(tmp_path):
    """compile=true (torch.compile of the forward) against eager: same trajectory to float32 round-off."""
    common = ["model=mlp", "model.widths=[16]", "steps=30", "eval_every=10"]
    for mode in ("true", "false"):
        assert run_in_process([*common, f"compile={mode}", f"hydra.run.dir={tmp_path / mode}"]) == 0
    compiled, eager = read_metrics(tmp_path / "true"), read_metrics(tmp_path / "false")
    for a, b in zip(compiled, eager):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
    keys = [list(torch.load(tmp_path / mode / "model.pt", weights_only=True)) for mode in ("true", "false")]
    assert keys[0] == keys[1]


def test_cnn_weights_default_to_contiguous_nchw():
    model = cnn((1, 8, 8), 10, channels=(4, 8))
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
