"""Document streams shaped like an experiment's run, built with event-model's composers.

Used by the pipeline tests and by the writer processes they start.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from event_model import ComposeDescriptorBundle, ComposeRunBundle, compose_run

from orchestrion.schema import POINT_SEQUENCE_KEY_MD

NUMBER = {"dtype": "number", "shape": [], "source": "sim://sequencer"}
AXIS = "point-qubit_detuning"


def counts_key(shots: int) -> dict[str, Any]:
    return {"dtype": "array", "shape": [shots], "dtype_numpy": "<i8", "source": "sim://counts", "units": "counts"}


def sequence_json(detuning: float) -> str:
    return json.dumps({"operations": [{"op": "pulse", "frequency": 12.6e9 + detuning}], "shots": 4})


def sequence_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class FakeRun:
    """A run in the making: its start, its streams' composers, its stop."""

    run: ComposeRunBundle
    primary: ComposeDescriptorBundle
    sequences: ComposeDescriptorBundle
    shots: int
    detunings: list[float]

    @property
    def uid(self) -> str:
        return str(self.run.start_doc["uid"])

    def head(self) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "start", dict(self.run.start_doc)
        yield "descriptor", dict(self.sequences.descriptor_doc)
        yield "descriptor", dict(self.primary.descriptor_doc)

    def point(self, index: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """The documents of one point: its sequence (the first time it appears), its event."""
        detuning = self.detunings[index % len(self.detunings)]
        text = sequence_json(detuning)
        digest = sequence_hash(text)
        if index < len(self.detunings):
            data = {"sequence-hash": digest, "sequence-json": text}
            yield "event", self.sequences.compose_event(data=data, timestamps=dict.fromkeys(data, time.time()))
        counts = [(index + shot) % 7 for shot in range(self.shots)]
        data = {
            "sequencer-bright_fraction": sum(c > 3 for c in counts) / self.shots,
            "sequencer-counts": counts,
            "sequencer-sequence_hash": digest,
            "point-index": index,
            AXIS: detuning,
        }
        yield "event", self.primary.compose_event(data=data, timestamps=dict.fromkeys(data, time.time()))

    def tail(
        self, fit: dict[str, float] | None = None, exit_status: str = "success"
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        if fit:
            keys = {f"fit-{k}": NUMBER for k in fit}
            analysis = self.run.compose_descriptor(name="analysis", data_keys=keys)
            yield "descriptor", dict(analysis.descriptor_doc)
            data = {f"fit-{k}": v for k, v in fit.items()}
            yield "event", analysis.compose_event(data=data, timestamps=dict.fromkeys(data, time.time()))
        baseline = self.run.compose_descriptor(name="baseline", data_keys={"rf-frequency-readback": NUMBER})
        yield "descriptor", dict(baseline.descriptor_doc)
        for value in (200e6, 200e6 + 1):
            yield (
                "event",
                baseline.compose_event(
                    data={"rf-frequency-readback": value}, timestamps={"rf-frequency-readback": time.time()}
                ),
            )
        yield "stop", dict(self.run.compose_stop(exit_status=exit_status))


def fake_run(shots: int = 4, detunings: int = 5, uid: str | None = None, **metadata: Any) -> FakeRun:
    md: dict[str, Any] = {
        "experiment": "spectroscopy",
        "plan_name": "spectroscopy",
        "scan_id": 7,
        "job_id": "job-42",
        "num_points": detunings,
        "parameters": {
            "qubit": {"frequency": {"value": 12.6428e9, "timestamp": "2026-01-01T00:00:00+00:00", "source": "default"}},
            "detection": {"threshold": {"value": 5, "timestamp": "2026-01-02T00:00:00+00:00", "source": "calibration"}},
        },
        "hints": {"dimensions": [([AXIS], "primary")]},
        POINT_SEQUENCE_KEY_MD: "sequencer-sequence_hash",
    }
    md.update(metadata)
    run = compose_run(uid=uid, metadata=md)
    primary = run.compose_descriptor(
        name="primary",
        data_keys={
            "sequencer-bright_fraction": NUMBER,
            "sequencer-counts": counts_key(shots),
            "sequencer-sequence_hash": {"dtype": "string", "shape": [], "source": "sim://hash"},
            "point-index": {"dtype": "integer", "shape": [], "source": "soft://index"},
            AXIS: {"dtype": "number", "shape": [], "source": "soft://detuning", "units": "Hz"},
        },
    )
    sequences = run.compose_descriptor(
        name="sequences",
        data_keys={
            "sequence-hash": {"dtype": "string", "shape": [], "source": "soft://hash"},
            "sequence-json": {"dtype": "string", "shape": [], "source": "soft://json"},
        },
    )
    return FakeRun(run, primary, sequences, shots, [-2e3 + 1e3 * i for i in range(detunings)])


def whole_run(
    points: int, shots: int = 4, fit: dict[str, float] | None = None, **metadata: Any
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every document of a finished run of ``points`` points (the scan repeats its detunings)."""
    run = fake_run(shots=shots, detunings=min(points, 5) or 1, **metadata)
    yield from run.head()
    for index in range(points):
        yield from run.point(index)
    yield from run.tail(fit)
