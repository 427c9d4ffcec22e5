"""A real ophyd-async file-writing detector for tests: `SimBlobDetector` writing HDF5 (SWMR)."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg
from ophyd_async.core import StaticFilenameProvider, StaticPathProvider, init_devices
from ophyd_async.sim import PatternGenerator, SimBlobDetector

FRAME_SHAPE = (240, 320)  # SimBlobDetector's frames, uint8
DATASET = "/entry/data/data"  # where SimBlobDetector's file keeps them


async def _no_wait(_: float) -> None:
    """The pattern generator's pause between frames, skipped: frames as fast as they are made."""
    await asyncio.sleep(0)


def blob_detector(directory: Path, name: str = "det", file_name: str = "blob") -> SimBlobDetector:
    """A connected `SimBlobDetector` writing ``directory/FILE_NAME.h5`` (a RunEngine must exist:
    ophyd-async connects in its event loop)."""
    directory.mkdir(parents=True, exist_ok=True)
    provider = StaticPathProvider(StaticFilenameProvider(file_name), directory)
    with init_devices():
        detector = SimBlobDetector(provider, pattern_generator=PatternGenerator(sleep=_no_wait), name=name)
    return detector


def detector_file(directory: Path, file_name: str = "blob") -> Path:
    return directory / f"{file_name}.h5"


def count_then(detector: SimBlobDetector, num: int, before_close: Any = None) -> Generator[Msg, Any, Any]:
    """`bp.count` of ``detector``, calling ``before_close()`` after the last point, before the
    run's stop (the detector's file is still open: it is closed at the unstage, after the stop)."""

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md={"plan_name": "count"})
    def inner() -> Iterator[Msg]:
        for _ in range(num):
            yield from bps.trigger_and_read([detector])
        if before_close is not None:
            before_close()

    return (yield from inner())
