"""The JSON pulse-sequence model: validation that names the culprit, stable hashes."""

from __future__ import annotations

import json

import pytest

from orchestrion.sequence import Cool, Detect, Pulse, PulseSequence, SequenceError, parse_sequence, sequence_json_schema


def _sequence(**pulse: object) -> dict[str, object]:
    fields = {"op": "pulse", "frequency": 1e9, "duration": 1e-5, "amplitude": 0.5, "label": "pi"} | pulse
    return {
        "shots": 10,
        "operations": [{"op": "cool", "duration": 1e-3}, fields, {"op": "detect", "duration": 2e-4, "threshold": 5}],
    }


def test_valid_sequence_round_trips_through_json() -> None:
    sequence = parse_sequence(_sequence())
    again = parse_sequence(sequence.to_json())
    assert again == sequence
    assert again.content_hash == sequence.content_hash
    assert sequence.shot_duration == pytest.approx(1e-3 + 1e-5 + 2e-4)
    assert sequence.duration == pytest.approx(10 * sequence.shot_duration)


def test_hash_depends_on_content_only() -> None:
    a = parse_sequence(_sequence())
    b = parse_sequence(json.dumps(_sequence(), indent=4, sort_keys=False))
    c = parse_sequence(_sequence(duration=2e-5))
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_sequence(duration=-1.0), "operation 1 (pulse 'pi'), field 'duration'"),
        (_sequence(amplitude=1.5), "operation 1 (pulse 'pi'), field 'amplitude'"),
        (_sequence(frequency="fast"), "operation 1 (pulse 'pi'), field 'frequency'"),
        (_sequence(colour="red"), "operation 1 (pulse 'pi'), field 'colour'"),
        ({"shots": 0, "operations": [{"op": "detect", "duration": 1e-4, "threshold": 1}]}, "field 'shots'"),
        (
            {"shots": 1, "operations": [{"op": "zap"}, {"op": "detect", "duration": 1e-4, "threshold": 1}]},
            "operation 0 (zap)",
        ),
        ({"shots": 1, "operations": [{"op": "cool", "duration": 1e-3}]}, "exactly one detect"),
        ("{not json", "not JSON"),
    ],
)
def test_invalid_sequence_names_the_problem(data: object, expected: str) -> None:
    with pytest.raises(SequenceError, match="invalid sequence") as info:
        parse_sequence(data)  # type: ignore[arg-type]
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_detection_must_be_last() -> None:
    with pytest.raises(ValueError, match="must be the last"):
        PulseSequence(
            shots=1,
            operations=(Detect(duration=1e-4, threshold=1), Pulse(frequency=1e9, duration=1e-6, amplitude=1)),
        )


def test_schema_is_published_and_describes_operations() -> None:
    schema = sequence_json_schema()
    text = json.dumps(schema)
    for op in ("cool", "pulse", "wait", "detect"):
        assert f'"{op}"' in text
    assert "Drive frequency (Hz)" in text
    assert (
        PulseSequence(shots=1, operations=(Cool(duration=1e-3), Detect(duration=1e-4, threshold=1))).detection.threshold
        == 1
    )
