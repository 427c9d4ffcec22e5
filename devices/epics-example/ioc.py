"""A soft IOC for the EPICS example lab: a stage that moves, a beam current, a diode.

Run it in a process of its own (pythonSoftIOC with epicscorelibs, `pip install
softioc`), with the Channel Access ports of your choice:

    python devices/epics-example/ioc.py --prefix ORCH

Records (PREFIX is ``--prefix``):

- ``PREFIX:STAGE:SP`` set-point; a put completes when the move has (put-callback), the
  read-back ``PREFIX:STAGE:RBV`` travels there at ``PREFIX:STAGE:VELO`` units/s, and
  ``PREFIX:STAGE:DMOV`` reads 0 while it moves;
- ``PREFIX:BEAM:CURRENT`` updates on its own clock (every ``--period`` s): a slowly
  decaying stored beam with a little noise, in mA;
- ``PREFIX:DIODE:ACQUIRE`` starts one acquisition (put-callback completes with it);
  ``PREFIX:DIODE:VALUE`` is then the diode's counts: a Gaussian peak over the stage
  position, scaled by the beam current.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time

from softioc import asyncio_dispatcher, builder, softioc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="ORCH", help="record name prefix (default ORCH)")
    parser.add_argument("--velocity", type=float, default=20.0, help="stage speed, units/s")
    parser.add_argument("--period", type=float, default=0.05, help="beam current update period, s")
    parser.add_argument("--acquire-time", type=float, default=0.005, help="diode acquisition time, s")
    parser.add_argument("--pva", action="store_true", help="also serve the records over PV Access")
    options = parser.parse_args()

    dispatcher = asyncio_dispatcher.AsyncioDispatcher()
    builder.SetDeviceName(options.prefix)

    readback = builder.aIn("STAGE:RBV", initial_value=0.0, EGU="mm", PREC=4)
    done = builder.longIn("STAGE:DMOV", initial_value=1)  # a short, as in a motor record
    velocity = builder.aOut("STAGE:VELO", initial_value=options.velocity, EGU="mm/s")

    async def move(target: float) -> None:
        done.set(0)
        start, began = readback.get(), time.monotonic()
        duration = abs(target - start) / max(velocity.get(), 1e-9)
        while (elapsed := time.monotonic() - began) < duration:
            readback.set(start + (target - start) * elapsed / duration)
            await asyncio.sleep(0.01)
        readback.set(target)
        done.set(1)

    builder.aOut("STAGE:SP", initial_value=0.0, EGU="mm", PREC=4, on_update=move, blocking=True, always_update=True)

    current = builder.aIn("BEAM:CURRENT", initial_value=300.0, EGU="mA", PREC=3)
    value = builder.aIn("DIODE:VALUE", initial_value=0.0, EGU="counts", PREC=1)

    async def acquire(_: int) -> None:
        await asyncio.sleep(options.acquire_time)
        peak = 1000.0 * math.exp(-((readback.get() - 1.0) ** 2) / (2 * 0.3**2))
        value.set(random.gauss(peak * current.get() / 300.0, 5.0) + 50.0)

    builder.longOut("DIODE:ACQUIRE", initial_value=0, on_update=acquire, blocking=True, always_update=True)

    async def beam() -> None:
        began = time.monotonic()
        while True:
            await asyncio.sleep(options.period)
            decayed = 300.0 * math.exp(-(time.monotonic() - began) / 36_000.0)
            current.set(decayed + random.gauss(0.0, 0.05))

    builder.LoadDatabase()
    softioc.iocInit(dispatcher, enable_pva=options.pva)
    dispatcher(beam)
    print(f"IOC {options.prefix} ready", flush=True)
    softioc.non_interactive_ioc()


if __name__ == "__main__":
    main()
