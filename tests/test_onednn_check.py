"""benchmarks/onednn_1x1.py: the check behind the rule that narrow ResNets train in NCHW on CPUs.

Only safe cases run for real here (16 input channels): the cases oneDNN#6035 breaks corrupt the
heap of the process they run in, which is why the script gives each its own."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import onednn_1x1  # noqa: E402


def test_a_safe_case_is_ok_both_ways_and_a_rerun_skips_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "onednn.json"
    command = ["--channels", "16", "--threads", "1", "--steps", "2", "--timeout", "600", "--out", str(out)]
    assert onednn_1x1.main(command) == 0
    report = json.loads(out.read_text())
    assert report["cases"] == {"16 1 channels_last": "ok", "16 1 nchw": "ok"}
    assert report["about"]["onednn"] != "unknown" and report["about"]["torch"]
    printed = capsys.readouterr().out
    assert "| 16 | 1 | channels_last | ok | yes |" in printed and "0 failing case(s)" in printed

    def must_not_run(*args):  # noqa: ANN002, ANN202
        raise AssertionError("a finished case ran again")

    monkeypatch.setattr(onednn_1x1, "run_case", must_not_run)
    assert onednn_1x1.main(command) == 0


@pytest.mark.parametrize("case, timeout, outcome", [
    ("import time; time.sleep(600)", 1.0, "hang"),  # 600 s never fit in 1, however fast the machine
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", 600.0, "crash (SIGSEGV)"),
    ("print('{\"wrong\": 3, \"steps\": 5}')", 600.0, "wrong 3 of 5"),
    ("raise SystemExit('no oneDNN here')", 600.0, "error: no oneDNN here"),
])
def test_each_way_a_case_can_fail_is_named(monkeypatch, case, timeout, outcome):
    monkeypatch.setattr(onednn_1x1, "CASE", case)
    assert onednn_1x1.run_case(4, 2, "channels_last", 5, timeout=timeout) == outcome


def test_a_failure_the_layout_rule_does_not_cover_fails_the_check(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onednn_1x1, "run_case", lambda channels, *rest: "hang" if channels < 16 else "wrong 1 of 2")
    command = ["--channels", "4", "--threads", "2", "--layouts", "channels_last", "--out", str(tmp_path / "a.json")]
    assert onednn_1x1.main(command) == 0  # 4 channels fail, and selfsup trains them in NCHW
    assert "| 4 | 2 | channels_last | hang | no (NCHW instead) |" in capsys.readouterr().out
    command = ["--channels", "24", "--threads", "2", "--layouts", "channels_last", "--out", str(tmp_path / "b.json")]
    assert onednn_1x1.main(command) == 1
    assert "1 failing case(s) that selfsup would train: the layout rule is too narrow" in capsys.readouterr().out
