"""A real IPython session with the Orchestrion profile, driven through a terminal (pexpect)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .shell_session import Session
from .support import free_port


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    # One session for the tests that only type into it: IPython with the stack takes seconds to start.
    shell = Session(tmp_path_factory.mktemp("shell") / "home")
    yield shell
    shell.close()


def test_namespace_has_the_lab_experiments_and_parameters(session: Session) -> None:
    assert "experiments: calibrate_frequency, rabi_flop, ramsey, spectroscopy" in session.banner
    assert "Not available" not in session.banner
    names = "('RE', 'params', 'spectroscopy', 'ramsey', 'sequencer', 'rf', 'field', 'missing')"
    out = session.run(f"print(sorted(n for n in {names} if n in globals()))")
    assert "['RE', 'field', 'params', 'ramsey', 'rf', 'sequencer', 'spectroscopy']" in out
    assert "12642800000.0" in session.run('params["qubit.frequency"]')
    # Tab completion offers parameter ids inside the brackets.
    assert "qubit.pi_time" in session.run("params._ipython_key_completions_()")


def test_an_experiment_runs_and_its_summary_appears(session: Session) -> None:
    out = session.run('RE(spectroscopy(shots=20, scan=["spectroscopy.detuning=-60e3:60e3:7"]))')
    assert re.search(r"spectroscopy run [0-9a-f]{8}: success, 7 points", out), out
    assert "sequencer-bright_fraction" in out  # the live table
    assert "Traceback" not in out


def test_past_runs_are_browsable_in_the_catalog_and_through_db(session: Session) -> None:
    session.run('RE(rabi_flop(shots=10, scan=["rabi_flop.duration=0:10e-6:4"]))')
    assert "'rabi_flop'" in session.run('catalog[-1].metadata["start"]["experiment"]')
    assert "'rabi_flop'" in session.run(
        'catalog.search(Key("experiment") == "rabi_flop").values()[-1].metadata["start"]["experiment"]'
    )
    assert "4" in session.run("len(db[-1].table())")


def test_a_bad_value_gives_one_line_and_the_session_survives(session: Session) -> None:
    out = session.run('RE(spectroscopy(parameters={"qubit.amplitude": 3}))')
    errors = [line for line in out.splitlines() if line.strip()]
    assert errors[-1].startswith("error: qubit.amplitude: 3.0 is above the maximum 1"), out
    assert "Traceback" not in out
    out = session.run('params["qubit.frequency"] = 5')
    assert "error: qubit.frequency: 5.0 is below the minimum" in out
    assert "Traceback" not in out
    # The full traceback is still there for whoever wants it.
    assert "ParameterError" in session.run("%tb")
    assert "still alive" in session.run('print("still alive")')
    assert "12642800000.0" in session.run('params["qubit.frequency"]')


def test_parameter_history_and_as_of_reads(session: Session) -> None:
    session.run('params["qubit.pi_time"] = 11e-6')
    assert "1.1e-05" in session.run('params["qubit.pi_time"]')
    out = session.run('[(h.value, h.source.split(":")[0]) for h in params.history("qubit.pi_time")]')
    assert "(1e-05, 'default')" in out
    assert "(1.1e-05, 'shell')" in out
    assert "1e-05" in session.run('params.at(params.history("qubit.pi_time")[0].timestamp)["qubit.pi_time"]')


def test_ctrl_c_pauses_and_the_run_can_be_aborted(tmp_path: Path) -> None:
    shell = Session(tmp_path / "home", time_scale=1.0)  # real time: a point takes ~0.12 s
    try:
        shell.child.sendline("RE(rabi_flop())")
        shell.expect(r"\|\s+3 \|")  # the third point is in the table
        shell.child.sendintr()
        shell.expect("deferred pause")
        shell.child.sendintr()
        shell.expect(r"RE.resume\(\)\s+Resume the plan")
        shell.wait_prompt()
        out = shell.run("RE.state")
        assert "'paused'" in out
        out = shell.run("RE.abort()")
        assert re.search(r"rabi_flop run [0-9a-f]{8}: abort, \d+ points", out), out
        assert "'idle'" in shell.run("RE.state")
    finally:
        shell.close()


def test_startup_with_a_broken_device_starts_with_what_works(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    lab = (Path(__file__).resolve().parents[1] / "devices" / "lab.yaml").read_text()
    lab += "  laser:\n    class: orchestrion.sim.NoSuchLaser\n    role: baseline\n"
    (devices / "lab.yaml").write_text(lab)
    shell = Session(tmp_path / "home", devices_dir=devices)
    try:
        assert "Not available:" in shell.banner
        assert "device laser: device 'laser'" in shell.banner
        assert "has no class 'NoSuchLaser'" in shell.banner
        out = shell.run('RE(spectroscopy(shots=10, scan=["spectroscopy.detuning=0:1e3:2"]))')
        assert re.search(r"spectroscopy run [0-9a-f]{8}: success, 2 points", out), out
    finally:
        shell.close()


def test_the_catalog_made_after_the_prompt_has_the_run_just_made(tmp_path: Path) -> None:
    # The catalog, its v1 view and the live table are made behind the prompt (ADR 0821):
    # the first line typed uses all three, waiting for them if it must.
    shell = Session(tmp_path / "home")
    try:
        assert "Not available" not in shell.banner
        assert "catalog:" in shell.banner
        out = shell.run(
            '_run = RE(rabi_flop(shots=10, scan=["rabi_flop.duration=0:10e-6:4"])); '
            'print("same run:", catalog[-1].metadata["start"]["uid"] == _run.run_start_uids[0])'
        )
        assert "same run: True" in out, out
        assert "sequencer-bright_fraction" in out  # the live table printed the run
        assert "4" in shell.run("len(db[-1].table())")
        # Made by now: the names are the objects themselves, no longer their stand-ins.
        out = shell.run("print(type(catalog).__name__, type(db).__name__, type(bec).__name__, Key.__name__)")
        assert "CatalogOfBlueskyRuns Broker BestEffortCallback Key" in out, out
    finally:
        shell.close()


def test_a_catalog_server_that_does_not_answer_is_in_the_banner_and_named_at_use(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    shell = Session(tmp_path / "home", extra_env={"ORCHESTRION_TILED_URI": address})
    try:
        assert f"catalog: no Tiled server answers at {address} (Connection refused)" in shell.banner
        assert "past runs: catalog[-1]" not in shell.banner
        why = f"catalog is not available: no Tiled server answers at {address} (Connection refused)"
        for _ in range(2):
            out = shell.run("catalog[-1]")
            said = [line for line in out.splitlines() if line.strip()][1:]  # after the echoed input
            assert said == [f"error: {why}   (%tb shows the traceback)"], out
        said = [line for line in shell.run("catalog").splitlines() if line.strip()][1:]
        assert said == [f"Out[3]: <{why}>"], said
        out = shell.run("db[-1]")
        assert "error: db (databroker v1 view) is not available: no catalog (no Tiled server answers" in out, out
        assert "Traceback" not in out
    finally:
        shell.close()


def test_a_damaged_catalog_is_named_at_its_first_use(tmp_path: Path) -> None:
    # Seen only when the catalog is opened, behind the prompt: the first use says why.
    catalog_file = tmp_path / "home" / "tiled" / "catalog.db"
    catalog_file.parent.mkdir(parents=True)
    catalog_file.write_bytes(b"not an sqlite database " * 100)
    shell = Session(tmp_path / "home")
    try:
        assert "catalog:" in shell.banner
        out = shell.run("catalog[-1]")
        said = [line for line in out.splitlines() if "catalog is not available" in line]
        assert len(said) == 1, out
        assert said[0].startswith("error: catalog is not available: "), out
        assert "database" in said[0], out
        assert "catalog: " in shell.run("print(*(p.part + ': ' + p.message for p in session.problems), sep='\\n')")
    finally:
        shell.close()
