"""How the fake answers a request for a prediction's output: 404 once the file is gone, the download faults
(download_error, slow_download), or the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from staging.fake_replicate.faults import FaultBook
from staging.fake_replicate.prediction import Prediction, data_removed


@dataclass(frozen=True)
class OutputAnswer:
    """How to answer one request for an output: 200 with the file at `path`, or the error `status`;
    after `hold_s` seconds (the slow_download fault)."""

    status: int
    path: Path | None = None
    hold_s: float = 0.0


def answer_output(
    prediction: Prediction, faults: FaultBook, expire_after_s: float | None, *, download: bool
) -> OutputAnswer:
    """The answer for a prediction that has an output; a `download` (a GET, not a HEAD) may meet a
    download fault, which is then listed among the prediction's faults."""
    if data_removed(prediction, expire_after_s):
        return OutputAnswer(404)
    fault = faults.take_download_fault(prediction.prompt) if download else None
    if fault is not None:
        prediction.faults.setdefault(fault.kind, fault)
    if fault is not None and fault.kind == "download_error":
        return OutputAnswer(500)
    hold_s = fault.seconds if fault is not None else 0.0  # slow_download
    return OutputAnswer(200, prediction.output_path, hold_s)
