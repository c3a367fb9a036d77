"""The read-back rule of sweeps and stages: a finished run is reused only for the settings that made
it, an interrupted one resumed, and a run without a record of its settings never silently reused."""
import json

import pytest

from selfsup.errors import SelfsupError
from selfsup.recipes import ClassifierTraining
from selfsup.recipes.sweep import label_sweep, run_or_read


def _finishing(calls):
    def run(resume, run_dir):
        calls.append(resume)
        (run_dir / "summary.json").write_text(json.dumps({"test_top1": 50.0 + len(calls)}))
        return {"test_top1": 50.0 + len(calls)}
    return run


def test_a_finished_run_is_read_back_for_its_settings_and_refused_for_others(tmp_path):
    calls = []
    run = _finishing(calls)
    stamp = {"settings": {"optim": {"lr": 0.1}, "device": "cpu"}, "labels": 0.1}
    first = run_or_read(tmp_path, stamp, lambda resume: run(resume, tmp_path), finished="test_top1")
    again = run_or_read(tmp_path, stamp, lambda resume: run(resume, tmp_path), finished="test_top1")
    assert first == again == {"test_top1": 51.0} and calls == [False]
    moved = {"settings": {"optim": {"lr": 0.1}, "device": "cuda"}, "labels": 0.1}
    assert run_or_read(tmp_path, moved, lambda resume: run(resume, tmp_path)) == first
    other = {"settings": {"optim": {"lr": 0.03}, "device": "cpu"}, "labels": 0.1}
    with pytest.raises(SelfsupError, match=r"made with other settings \(settings.optim.lr: then 0.1, now 0.03\)"):
        run_or_read(tmp_path, other, lambda resume: run(resume, tmp_path))
    assert calls == [False]


def test_an_interrupted_run_resumes_and_an_unstamped_one_is_refused(tmp_path):
    calls = []
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "stamp.json").write_text(json.dumps({"lr": 0.1}))
    (interrupted / "checkpoints" / "last.pt").write_bytes(b"weights")
    run_or_read(interrupted, {"lr": 0.1}, lambda resume: _finishing(calls)(resume, interrupted), finished="test_top1")
    assert calls == [True]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text(json.dumps({"test_top1": 70.0}))
    with pytest.raises(SelfsupError, match="without a record of its settings"):
        run_or_read(legacy, {"lr": 0.1}, lambda resume: pytest.fail("ran"))


def test_a_label_sweep_re_run_with_another_rate_does_not_report_the_old_numbers(tmp_path):
    ran = []

    def run(fraction, seed, run_dir, resume):
        ran.append((fraction, seed))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps({"test_top1": 60.0 + seed}))
        return {"test_top1": 60.0 + seed}

    facts = {"checkpoint": "random initialisation", "settings": ClassifierTraining(epochs=1)}
    report = label_sweep(run, tmp_path, [0.1], [0, 1], facts)
    assert report["summary"][0]["mean top-1 (%)"] == 60.5 and len(ran) == 2
    label_sweep(run, tmp_path, [0.1], [0, 1], {**facts, "settings": ClassifierTraining(epochs=1, device="cpu")})
    assert len(ran) == 2  # read back: the device is not a setting of the result
    faster = ClassifierTraining(epochs=1, backbone_lr_scale=1.0)
    with pytest.raises(SelfsupError, match=r"10pct-seed0 was made with other settings \(settings.backbone_lr_scale: "
                                           r"then 0.1, now 1.0\)"):
        label_sweep(run, tmp_path, [0.1], [0, 1], {**facts, "settings": faster})
