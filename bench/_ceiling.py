"""The ceiling: what the same RunEngine reaches when a bare-bluesky post-processing, with
nothing of Orchestrion's, writes the same destinations in a second process.

The pipeline figures compare Orchestrion with a bare RunEngine that writes nothing.  On
this machine no post-processing reaches that: its two cores are shared, and work on
one slows the RunEngine on the other (the busy-core figure).  The ceiling says how
much of the gap any writer of the same data pays, and how much is Orchestrion's.

`BareWriters`, in a child process at the post-processing niceness: a plain h5py writer
(one dataset per data key, a row appended per event in an SWMR file, fsynced at the
stop, as the Serializer's file is before its run is reported written) and
bluesky-tiled-plugins' `TiledWriter` as its documentation shows it, on Tiled's
in-process app as `build_app` makes it (one catalogued stream: what the documents
carry, no bundled stream).  `CeilingSink`, subscribed to the RunEngine, pickles the
documents to the child in batches, as `ProcessSink` does; `wait_written` returns when
the child has finished every run it was given.

    python -m bench._ceiling DIRECTORY [--no-tiled] [--readable DIR]   (the child)
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import IO, Any

BATCH = 64  # events per pickled batch (others go at once)
FLUSH_ROWS = 100  # rows between SWMR flushes of the plain writer: readers see the file grow
NICENESS = 10  # the post-processing process's (`OrchestrionConfig.post_processing_niceness`)
DONE = b"done\n"


class PlainHDF5Writer:
    """A run's events as rows of one dataset per data key, in an SWMR file fsynced at its stop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.file: Any = None
        self.path: Path | None = None
        self.external: set[str] = set()
        self.datasets: dict[str, Any] = {}
        self.rows = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        import h5py
        import numpy as np

        if name == "start":
            self.path = self.directory / f"{doc['uid']}.h5"
            self.file = h5py.File(self.path, "w", libver="latest")
            self.datasets, self.rows = {}, 0
        elif name == "descriptor":
            self.external |= {k for k, v in doc["data_keys"].items() if v.get("external")}
        elif name == "event":
            values = {k: v for k, v in doc["data"].items() if k not in self.external}
            values.update(seq_num=doc["seq_num"], time=doc["time"])
            if not self.datasets:
                for key, value in values.items():
                    array = np.asarray(value)
                    self.datasets[key] = self.file.create_dataset(
                        key, (0, *array.shape), maxshape=(None, *array.shape), dtype=array.dtype,
                        chunks=(1, *array.shape) if array.shape else (1024,),
                    )  # fmt: skip
                self.file.swmr_mode = True
            for key, dataset in self.datasets.items():
                dataset.resize(self.rows + 1, axis=0)
                dataset[self.rows] = values[key]
            self.rows += 1
            if self.rows % FLUSH_ROWS == 0:
                self.file.flush()
        elif name == "stop":
            self.file.close()
            assert self.path is not None
            descriptor = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def tiled_writer(directory: Path, readable: list[str]) -> Any:
    """bluesky-tiled-plugins' TiledWriter on a new catalog served by Tiled's in-process app."""
    from bluesky_tiled_plugins import TiledWriter
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)  # its start-up banner
    files = directory / "files"
    files.mkdir(parents=True, exist_ok=True)
    adapter = from_uri(
        f"sqlite:///{directory / 'catalog.db'}", writable_storage=[str(files), f"sqlite:///{directory / 'tables.db'}"],
        readable_storage=readable, init_if_not_exists=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's deprecation of the test client tiled uses
        context = Context.from_app(build_app(adapter))
    return TiledWriter(from_context(context))


class BareWriters:
    """The child's callbacks: the plain HDF5 writer and, unless left out, TiledWriter."""

    def __init__(self, directory: Path, tiled: bool, readable: list[str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.callbacks: list[Any] = [PlainHDF5Writer(directory)]
        if tiled:
            self.callbacks.append(tiled_writer(directory / "tiled", readable))

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(name, doc)


class CeilingSink:
    """The RunEngine's side: documents to the child in batches; `wait_written` for its answers."""

    def __init__(self, directory: Path, *, tiled: bool = True, readable: list[Path] | None = None) -> None:
        command = ["nice", "-n", str(NICENESS), sys.executable, "-m", "bench._ceiling", str(directory)]
        if not tiled:
            command.append("--no-tiled")
        for path in readable or []:
            command += ["--readable", str(path)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        cwd=Path(__file__).parent.parent)  # fmt: skip
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self._input: IO[bytes] = self.process.stdin
        self._answers: IO[bytes] = self.process.stdout
        self._batch: list[tuple[str, dict[str, Any]]] = []
        self._stops = 0
        if self._answers.readline() != b"ready\n":
            raise RuntimeError("the ceiling's writer process did not start")

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self._batch.append((name, doc))
        if name != "event" or len(self._batch) >= BATCH:
            pickle.dump(self._batch, self._input, protocol=pickle.HIGHEST_PROTOCOL)
            self._input.flush()
            self._batch = []
        self._stops += name == "stop"

    def wait_written(self) -> None:
        """Until the child has written every run whose stop it was given."""
        while self._stops:
            if self._answers.readline() != DONE:
                raise RuntimeError("the ceiling's writer process ended")
            self._stops -= 1

    def close(self) -> None:
        self._input.close()
        self.process.wait(timeout=60)


def serve() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--no-tiled", action="store_true")
    parser.add_argument("--readable", action="append", default=[])
    arguments = parser.parse_args()
    writers = BareWriters(arguments.directory, not arguments.no_tiled, arguments.readable)
    answers = sys.stdout.buffer
    answers.write(b"ready\n")
    answers.flush()
    source = sys.stdin.buffer
    while True:
        try:
            batch = pickle.load(source)
        except EOFError:
            return
        for name, doc in batch:
            writers(name, doc)
            if name == "stop":
                answers.write(DONE)
                answers.flush()


if __name__ == "__main__":
    serve()
