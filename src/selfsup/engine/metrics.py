"""Metrics of a run: ``metrics.jsonl`` (every row), one CSV per stream, TensorBoard scalars.

Streams: ``step`` (every ``log_every`` steps) and ``epoch`` (one row per epoch, with the kNN
monitor). On resume, rows written after the checkpoint's step are dropped, so the files
describe exactly one uninterrupted history.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def read_rows(run_dir: str | Path, stream: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the rest of the file is still good
        if stream is None or row.get("stream") == stream:
            rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tensorboard = None
        if not enabled:
            return
        self.path = self.run_dir / "metrics.jsonl"
        rows = read_rows(self.run_dir) if resume_step is not None else []
        rows = [r for r in rows if r.get("step", 0) <= (resume_step or 0)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._columns: dict[str, list[str]] = {}
        for stream in {r["stream"] for r in rows}:
            self._write_csv(stream, [r for r in rows if r["stream"] == stream])
        for stream in ("step", "epoch"):
            if stream not in self._columns:
                (self.run_dir / f"{stream}s.csv").unlink(missing_ok=True)

    def _csv_path(self, stream: str) -> Path:
        return self.run_dir / f"{stream}s.csv"

    def _write_csv(self, stream: str, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k != "stream" and k not in columns]
        with open(self._csv_path(stream), "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self._columns[stream] = columns

    @property
    def tensorboard(self):  # noqa: ANN201 - imported lazily: TensorBoard's import is slow
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tensorboard

    def log(self, stream: str, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"stream": stream, **row}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        known = self._columns.get(stream)
        if known is None or any(k not in known for k in row if k != "stream"):
            # New stream or new column: rewrite that CSV from the JSONL with the wider header.
            self._write_csv(stream, read_rows(self.run_dir, stream))
        else:
            with open(self._csv_path(stream), "a", newline="") as handle:
                csv.DictWriter(handle, known, extrasaction="ignore").writerow(row)
        step = row.get("step", 0)
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                self.tensorboard.add_scalar(f"{stream}/{key}", value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
