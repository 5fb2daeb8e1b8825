"""A Modbus TCP device served by pymodbus, for Kite's end-to-end tests.

usage: modbus_server.py PORT SPEC

SPEC is JSON: {"size": 100, "units": [1],
               "holding": {"0": [16712, 0]}, "input": {...},
               "coils": {"0": [true]}, "discrete": {...}}
Each area holds `size` values from protocol address 0; reading past the end
answers with an IllegalDataAddress exception, as a real device does. Every
unit id in `units` gets its own copy of the areas.
"""

import asyncio
import json
import logging
import sys
import warnings

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncTcpServer

warnings.filterwarnings("ignore")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def block(size, initial, fill):
    values = [fill] * size
    for address, words in (initial or {}).items():
        start = int(address)
        values[start : start + len(words)] = words
    # pymodbus maps a block starting at address 1 to protocol address 0.
    return ModbusSequentialDataBlock(1, values)


def device(spec):
    size = spec.get("size", 100)
    return ModbusDeviceContext(
        hr=block(size, spec.get("holding"), 0),
        ir=block(size, spec.get("input"), 0),
        co=block(size, spec.get("coils"), False),
        di=block(size, spec.get("discrete"), False),
    )


async def main():
    port = int(sys.argv[1])
    spec = json.loads(sys.argv[2])
    units = spec.get("units", [1])
    context = ModbusServerContext(devices={unit: device(spec) for unit in units}, single=False)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


asyncio.run(main())
