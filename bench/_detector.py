"""A file-writing detector for the benchmarks: an ophyd-async `StandardDetector` whose
frames (1 MiB each: 1024 x 1024 uint8) go to an HDF5 file of its own, in SWMR mode,
and whose documents only refer to them (StreamResource / StreamDatum).

Built from ophyd-async's public classes: `StandardDetector` with a trigger, an acquire
and a data logic around `ophyd_async.sim.PatternGenerator` (which writes the file),
as `SimBlobDetector` is, but with larger frames and no pause between them, so the
benchmark measures the documents' and the files' cost, not a simulated exposure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import numpy as np
from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    StandardDetector,
    StaticPathProvider,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    UUIDFilenameProvider,
    init_devices,
)
from ophyd_async.sim import PatternGenerator

SIDE = 1024  # pixels: a frame of SIDE x SIDE uint8 is 1 MiB
DATASET = "/entry/data/data"  # where PatternGenerator's file keeps the frames


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


class _Trigger(DetectorTriggerLogic):
    def __init__(self, generator: PatternGenerator) -> None:
        self.generator = generator

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.generator.setup_acquisition_parameters(exposure=livetime, period=livetime + deadtime,
                                                    number_of_frames=num)  # fmt: skip


class _Acquire(DetectorAcquireLogic):
    def __init__(self, generator: PatternGenerator) -> None:
        self.generator = generator
        self.task: asyncio.Task[None] | None = None

    async def start_acquiring(self) -> None:
        self.task = asyncio.create_task(self.generator.write_images_to_file())

    async def wait_for_idle(self) -> None:
        if self.task is not None:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class _Data(DetectorDataLogic):
    def __init__(self, path_provider: PathProvider, generator: PatternGenerator) -> None:
        self.path_provider = path_provider
        self.generator = generator

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        info = self.path_provider(datakey_name)
        self.generator.open_file(info.directory_path / f"{info.filename}.h5", SIDE, SIDE)
        frames = StreamResourceInfo(data_key=datakey_name, shape=(SIDE, SIDE), chunk_shape=(1, SIDE, SIDE),
                                    dtype_numpy=np.dtype(np.uint8).str, parameters={"dataset": DATASET})  # fmt: skip
        return StreamResourceDataProvider(
            uri=f"{info.directory_uri}{info.filename}.h5", resources=[frames], mimetype="application/x-hdf5",
            collections_written_signal=self.generator.images_written,
        )  # fmt: skip

    async def stop(self) -> None:
        self.generator.close_file()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]


class MiBDetector(StandardDetector):
    """1 MiB frames to its own HDF5 file (a new file at each stage), as fast as they are made."""

    def __init__(self, path_provider: PathProvider, name: str = "") -> None:
        generator = PatternGenerator(sleep=_no_wait)
        self.add_detector_logics(_Trigger(generator), _Acquire(generator), _Data(path_provider, generator))
        super().__init__(name=name)


def mib_detector(directory: Path, name: str = "camera") -> MiBDetector:
    """A connected `MiBDetector` writing under ``directory`` (a RunEngine must exist)."""
    directory.mkdir(parents=True, exist_ok=True)
    with init_devices():
        detector = MiBDetector(StaticPathProvider(UUIDFilenameProvider(), directory), name=name)
    return detector
