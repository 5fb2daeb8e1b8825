"""Modbus devices served by pymodbus, for Kite's end-to-end tests.

usage: modbus_server.py ENDPOINT SPEC

ENDPOINT is a TCP port (Modbus TCP), `rtu-over-tcp:PORT` (RTU frames on a
TCP socket, like a serial-to-Ethernet converter) or `rtu:PATH` (Modbus RTU
on a serial port, such as one end of a socat pair).

SPEC is JSON: {"size": 100, "units": [1],
               "holding": {"0": [16712, 0]}, "input": {...},
               "coils": {"0": [true]}, "discrete": {...}}
Each area holds `size` values from protocol address 0; reading past the end
answers with an IllegalDataAddress exception, as a real device does. Every
unit id in `units` gets its own copy of the areas; requests to any other
unit id go unanswered, as on a bus where that slave is dead.
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
from pymodbus import FramerType
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer

from pymodbus.exceptions import NoSuchIdException
from pymodbus.simulator.simcore import SimCore

warnings.filterwarnings("ignore")


def _silent_for_missing_devices(get_device):
    # pymodbus 3.16 raises KeyError for an unknown unit id, which its server
    # answers with a device-failure exception; a dead slave on a real bus
    # answers nothing, which `ignore_missing_devices` gives once the lookup
    # raises the exception it expects.
    def lookup(self, device_id):
        if device_id not in self.devices and 0 not in self.devices:
            raise NoSuchIdException(f"no device {device_id}")
        return get_device(self, device_id)

    return lookup


SimCore._SimCore__get_device = _silent_for_missing_devices(SimCore._SimCore__get_device)
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
    endpoint = sys.argv[1]
    spec = json.loads(sys.argv[2])
    units = spec.get("units", [1])
    context = ModbusServerContext(devices={unit: device(spec) for unit in units}, single=False)
    if endpoint.startswith("rtu:"):
        await StartAsyncSerialServer(
            context=context,
            framer=FramerType.RTU,
            port=endpoint[len("rtu:") :],
            baudrate=spec.get("baud", 19200),
            ignore_missing_devices=True,
        )
    elif endpoint.startswith("rtu-over-tcp:"):
        await StartAsyncTcpServer(
            context=context,
            framer=FramerType.RTU,
            address=("127.0.0.1", int(endpoint[len("rtu-over-tcp:") :])),
            ignore_missing_devices=True,
        )
    else:
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", int(endpoint)))


asyncio.run(main())
