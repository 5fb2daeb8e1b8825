#!/usr/bin/env python3
"""A simulated Texas Instruments Z-Stack 3.x.0 coordinator stick (CC2652, ZNP
firmware) on a serial port, for Kite's Zigbee tests.

It speaks the MT serial protocol on `port` (one end of a socat pty pair):
frames are parsed and built with zigpy-znp (`zigpy_znp.frames`,
`zigpy_znp.commands`, its `ZnpMtProtocol` framing, which drops garbage up to
the next SOF exactly as a real host does) and ZCL payloads with zigpy's
`zigpy.zcl`. Its NV memory is a JSON file (`znp-nv.json` in `dir`), so a
restarted simulator keeps its network like a re-plugged stick. Simulated end
devices join, are interviewed, report attributes and take On/Off and Level
commands. Every frame in and out is logged to stderr (the Rust wrapper sends
it to `dir/znp-stick.log`).

The test controls it through a Unix socket (`dir/znp-stick.sock`): one JSON
object per line in, one `{"ok": true, "result": ...}` or `{"ok": false,
"error": "..."}` per line out. See tests/support/src/znp.rs.

zigpy-znp is GPL-3.0: this file is test tooling run in its own venv
(.venv-zigbee), never linked into or shipped with Kite.

Usage: znp_stick.py PORT DIR [--replug]
"""

import argparse
import asyncio
import json
import logging
import math
import os
import random
import sys
import termios
import time
import traceback
import tty

import zigpy.types as zt
import zigpy.zcl
import zigpy.zdo.types as zdo_t
from zigpy.zcl import foundation

import zigpy_znp.commands as c
import zigpy_znp.types as t
from zigpy_znp.frames import GeneralFrame, TransportFrame
from zigpy_znp.uart import ZnpMtProtocol

LOG = logging.getLogger("znp-stick")

# ---- timings (seconds) ------------------------------------------------------
# A real CC2652 takes ~2 s from SYS_RESET_REQ to SYS_RESET_IND and up to
# ~3 s to form; these are shortened so tests stay fast.
RESET_DELAY = 0.05           # SYS_RESET_REQ -> SYS_RESET_IND; deaf meanwhile
STARTUP_MIN_DELAY = 0.05     # ZDO_STARTUP_FROM_APP -> ZDO_STATE_CHANGE_IND 9
FORMATION_STEPS = (0.01, 0.05, 0.10)  # BDB notification, state 8, state 9 + result
AREQ_DELAY = 0.01            # ZDO/permit-join callbacks after their SRSP
CONFIRM_DELAY = 0.02         # AF_DATA_REQUEST -> AF_DATA_CONFIRM (MAC ack)
REPLY_DELAY = 0.04           # AF_DATA_REQUEST -> the device's AF_INCOMING_MSG
REPORT_DELAY = 0.06          # a command -> the device's attribute report
NO_ROUTE_DELAY = 0.5         # AF_DATA_REQUEST to an absent device -> NWK_NO_ROUTE

# ---- MT constants -----------------------------------------------------------
VERSION = dict(TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1)
CODE_REVISION = 20230507
CAPABILITIES = (
    t.MTCapabilities.SYS | t.MTCapabilities.MAC | t.MTCapabilities.NWK
    | t.MTCapabilities.AF | t.MTCapabilities.ZDO | t.MTCapabilities.SAPI
    | t.MTCapabilities.UTIL | t.MTCapabilities.DEBUG | t.MTCapabilities.APP
    | t.MTCapabilities.GP | t.MTCapabilities.APP_CNF | t.MTCapabilities.UNK12
)  # 0x0FFF
SUPPORTED_SUBSYSTEMS = {
    t.Subsystem.SYS, t.Subsystem.MAC, t.Subsystem.NWK, t.Subsystem.AF,
    t.Subsystem.ZDO, t.Subsystem.SAPI, t.Subsystem.UTIL, t.Subsystem.DEBUG,
    t.Subsystem.APP, t.Subsystem.APPConfig, t.Subsystem.ZGP,
}

ST_SUCCESS = t.Status.SUCCESS
ST_FAILURE = t.Status.FAILURE
ST_INVALID_PARAMETER = t.Status.INVALID_PARAMETER
ST_NV_ITEM_UNINIT = t.Status.NV_ITEM_UNINIT
ST_NV_OPER_FAILED = t.Status.NV_OPER_FAILED
ST_NV_BAD_ITEM_LEN = t.Status.NV_BAD_ITEM_LEN
ST_APS_DUPLICATE_ENTRY = t.Status.APS_DUPLICATE_ENTRY
ST_NWK_NO_ROUTE = t.Status.NWK_NO_ROUTE
ZDP_SUCCESS = zdo_t.Status.SUCCESS               # 0x00
ZDP_INVALID_EP = zdo_t.Status.INVALID_EP         # 0x82
ZDP_NOT_SUPPORTED = zdo_t.Status.NOT_SUPPORTED   # 0x84
ZDP_NO_ENTRY = zdo_t.Status.NO_ENTRY             # 0x88

STATE_HOLD = t.DeviceState.InitializedNotStarted          # 0
STATE_STARTING = t.DeviceState.StartingAsCoordinator      # 8
STATE_STARTED = t.DeviceState.StartedAsCoordinator        # 9

# OSAL NV ids (zigpy_znp.types.nvids.OsalNvIds)
NV_EXTADDR = 0x0001
NV_STARTUP_OPTION = 0x0003
NV_EXTENDED_PAN_ID = 0x002D
NV_APS_USE_EXT_PANID = 0x0047
NV_BDBNODEISONANETWORK = 0x004E
NV_PRECFGKEY = 0x0062
NV_PRECFGKEYS_ENABLE = 0x0063
NV_PANID = 0x0083
NV_CHANLIST = 0x0084
NV_LOGICAL_TYPE = 0x0087
NV_ZDO_DIRECT_CB = 0x008F

STARTUP_CLEAR_CONFIG = 0x01
STARTUP_CLEAR_STATE = 0x02

# Config items Z-Stack creates itself, with the values of a factory-new stick;
# STARTUP_OPTION bit 0 (clear config) puts them back on the next boot.
DEFAULT_PRECFGKEY = bytes.fromhex("01030507090b0d0f00020406080a0c0d")
CONFIG_DEFAULTS = {
    NV_STARTUP_OPTION: b"\x00",
    NV_EXTENDED_PAN_ID: bytes(8),
    NV_APS_USE_EXT_PANID: bytes(8),
    NV_PRECFGKEY: DEFAULT_PRECFGKEY,
    NV_PRECFGKEYS_ENABLE: b"\x00",
    NV_PANID: b"\xff\xff",
    NV_CHANLIST: (0x00000800).to_bytes(4, "little"),  # channel 11
    NV_LOGICAL_TYPE: b"\x00",                          # coordinator build
    NV_ZDO_DIRECT_CB: b"\x00",
    NV_BDBNODEISONANETWORK: b"\x00",
}

PROFILE_HA = 0x0104
ON_OFF = 0x0006
LEVEL = 0x0008
IAS_ZONE = 0x0500
BASIC = 0x0000

MANUFACTURER_CODES = {
    "ikea": 0x117C, "philips": 0x100B, "signify": 0x100B, "lumi": 0x115F,
    "xiaomi": 0x115F, "sonoff": 0x1286, "ewelink": 0x1286, "_tz": 0x1002,
    "tuya": 0x1002, "sengled": 0x1160, "innr": 0x1166, "ledvance": 0x1189,
    "osram": 0x110C, "heiman": 0x120B, "develco": 0x1015, "frient": 0x1015,
}


class SAPIWire(t.CommandsBase, subsystem=t.Subsystem.SAPI):
    """ZB_WRITE_CONFIGURATION as the firmware reads it: ConfigId, Len, Value.
    (zigpy-znp 1.1.1 declares a spurious leading Status byte for this
    request; it never sends it itself.)"""

    ZBWriteConfiguration = t.CommandDef(
        t.CommandType.SREQ,
        0x05,
        req_schema=(
            t.Param("ConfigId", t.uint8_t, "NV item id of the configuration property"),
            t.Param("Value", t.ShortBytes, "Value"),
        ),
        rsp_schema=t.STATUS_SCHEMA,
    )


SAPIWire.ZBWriteConfiguration.Req.__qualname__ = "SAPI.ZBWriteConfiguration.Req"
SAPIWire.ZBWriteConfiguration.Rsp.__qualname__ = "SAPI.ZBWriteConfiguration.Rsp"

# Every request the stick parses, by header: zigpy-znp's, with the SAPI fix.
REQUESTS = {
    header: cmd for header, cmd in c.COMMANDS_BY_ID.items()
    if cmd.header.type in (t.CommandType.SREQ, t.CommandType.AREQ) and cmd.Req is cmd
}
REQUESTS[SAPIWire.ZBWriteConfiguration.Req.header] = SAPIWire.ZBWriteConfiguration.Req


def request_name(header) -> str:
    """"ZDO.NodeDescReq", "SYS.ResetReq", "AppConfig.BDBStartCommissioning";
    unknown ones "SYS.0x99"."""
    cmd = REQUESTS.get(header)
    if cmd is not None:
        return cmd.__qualname__.rsplit(".", 1)[0]
    try:
        subsystem = t.Subsystem(header.subsystem).name
    except ValueError:
        subsystem = "0x%02X" % int(header.subsystem)
    return "%s.0x%02X" % (subsystem, header.id)


def normalize_name(name: str) -> str:
    for alias in ("APP_CNF.", "APP_CONFIG.", "APPConfig."):
        if name.startswith(alias):
            return "AppConfig." + name[len(alias):]
    return name


def hexdump(data: bytes) -> str:
    return " ".join("%02X" % b for b in data)


def eui64(value: int) -> t.EUI64:
    return t.EUI64(value.to_bytes(8, "little"))


def ieee_int(value) -> int:
    return int.from_bytes(bytes(value), "little")


def lowest_channel(mask: int):
    for channel in range(11, 27):
        if mask & (1 << channel):
            return channel
    return None


def zcl_value(type_id: int, value):
    """A JSON value as zigpy's python type for ZCL type `type_id`."""
    python_type = foundation.DataType.from_type_id(type_id).python_type
    if issubclass(python_type, (zt.CharacterString, zt.LongCharacterString)):
        return python_type(str(value))
    if issubclass(python_type, (zt.LVBytes, zt.LongOctetString)):
        data = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        return python_type(data)
    if python_type is zt.EUI64 or issubclass(python_type, zt.EUI64):
        if isinstance(value, str):
            return zt.EUI64.convert(value)
        return zt.EUI64(int(value).to_bytes(8, "little"))
    if issubclass(python_type, float):
        return python_type(float(value))
    if issubclass(python_type, zt.Bool):
        return python_type(bool(value))
    return python_type(int(value))


def zero_of(type_id):
    """A neutral JSON value for a ZCL type, None for types not simulated."""
    if type_id in (0x42, 0x44, 0x41, 0x43):
        return ""
    if type_id in (0x38, 0x39, 0x3A):
        return 0.0
    if type_id == 0x10:
        return False
    if type_id in (0x00, 0x48, 0x4C, 0x50, 0x51, 0xFF):
        return None
    return 0


def default_attributes(device):
    """Attribute values a freshly joined device of this kind holds: every
    mandatory attribute of its input clusters (zigpy's definitions), with
    plausible values for the usual ones.
    {cluster: {attr: [zcl type id, json value]}}."""
    router = device["router"]
    values = {
        BASIC: {0x0000: 8, 0x0004: device["manufacturer"], 0x0005: device["model"],
                0x0007: 0x01 if router else 0x03},
        0x0001: {0x0020: 30, 0x0021: 200},
        ON_OFF: {0x0000: False},
        LEVEL: {0x0000: 254},
        0x0402: {0x0000: 2150},
        0x0405: {0x0000: 5000},
        IAS_ZONE: {0x0000: 0, 0x0001: 0x0015, 0x0002: 0, 0x0010: 0, 0x0011: 0xFF},
        0x0702: {0x0000: 0, 0x0300: 0, 0x0301: 1, 0x0302: 1000, 0x0400: 0},
        0x0B04: {0x0000: 0x08, 0x0505: 230, 0x0508: 0, 0x050B: 0, 0x0600: 1,
                 0x0601: 1, 0x0602: 1, 0x0603: 1000, 0x0604: 1, 0x0605: 1},
    }
    attributes = {}
    for cluster in [BASIC] + [cl for cl in device["in_clusters"] if cl != BASIC]:
        cluster_cls = zigpy.zcl.Cluster._registry.get(cluster)
        if cluster_cls is None:
            continue
        wanted = {attr: None for attr, definition in cluster_cls.attributes.items()
                  if definition.mandatory and attr < 0xF000 and not definition.is_manufacturer_specific}
        wanted.update(values.get(cluster, {}))
        if 0xFFFD in cluster_cls.attributes:
            wanted[0xFFFD] = 1  # ClusterRevision
        for attr, value in wanted.items():
            if attr not in cluster_cls.attributes:
                continue
            type_id = int(cluster_cls.attributes[attr].zcl_type)
            if value is None:
                value = zero_of(type_id)
            if value is None:
                continue
            try:
                zcl_value(type_id, value)
            except Exception:
                continue
            attributes.setdefault(str(cluster), {})[str(attr)] = [type_id, value]
    return attributes


class Nv:
    """The stick's NV memory, kept in a JSON file."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        else:
            ieee = 0x00124B0000000000 | random.getrandbits(32)
            data = {"ieee": "%016x" % ieee, "items": {}, "network": None, "devices": {}}
        self.ieee = int(data["ieee"], 16)
        self.items = {int(k, 16): bytes.fromhex(v) for k, v in data["items"].items()}
        self.network = data["network"]
        self.devices = data["devices"]
        self.items.setdefault(NV_EXTADDR, self.ieee.to_bytes(8, "little"))
        for item, value in CONFIG_DEFAULTS.items():
            self.items.setdefault(item, value)
        self.save()

    def save(self):
        data = {
            "ieee": "%016x" % self.ieee,
            "items": {"0x%04X" % k: v.hex() for k, v in sorted(self.items.items())},
            "network": self.network,
            "devices": self.devices,
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def byte(self, item, default=0):
        value = self.items.get(item, b"")
        return value[0] if value else default


class Line:
    """The device end of the pty: non-blocking reads into zigpy-znp's framing,
    buffered writes."""

    def __init__(self, loop, path, on_frame):
        self.loop = loop
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        # A re-plugged stick never sees what was sent while it was away.
        termios.tcflush(self.fd, termios.TCIFLUSH)
        self.pending = bytearray()
        self.protocol = ZnpMtProtocol(self)
        self.protocol.connection_made(self)
        self.on_frame = on_frame
        self.reading = True
        loop.add_reader(self.fd, self._readable)

    # The api side of ZnpMtProtocol.
    def connection_made(self):
        pass

    def connection_lost(self, exc):
        pass

    def frame_received(self, frame):
        self.on_frame(frame)

    # The transport side of ZnpMtProtocol.
    def write(self, data):
        self.pending += data
        self._flush()

    def close(self):
        pass

    def stop_reading(self):
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def _readable(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            LOG.error("serial port gone (%s): the stick is unplugged, exiting", e)
            self.loop.stop()
            return
        if not data:
            return
        LOG.debug("<-- raw %s", hexdump(data))
        self.protocol.data_received(data)

    def _flush(self):
        while self.pending:
            try:
                n = os.write(self.fd, self.pending)
            except BlockingIOError:
                self.loop.add_writer(self.fd, self._writable)
                return
            except OSError as e:
                LOG.error("cannot write to the serial port: %s", e)
                self.pending.clear()
                return
            del self.pending[:n]

    def _writable(self):
        self.loop.remove_writer(self.fd)
        self._flush()


class Stick:
    def __init__(self, loop, port, directory, replug):
        self.loop = loop
        self.dir = directory
        self.nv = Nv(os.path.join(directory, "znp-nv.json"))
        self.counts = {}
        self.silent = False
        self.unplugged = False
        self.generation = 0
        self.booting_until = 0.0
        self.started_at = time.monotonic()
        self.line = Line(loop, port, self.frame_received)
        self.handlers = self._handlers()
        # Power-up: a stick plugged in while the host has the port open
        # announces itself; one that was running before the host opened the
        # port said so to nobody.
        self.boot(t.ResetReason.PowerUp, announce=replug)

    # ---- power cycle --------------------------------------------------------

    def boot(self, reason, *, announce, glitch=False):
        """A (re)boot: runtime state is lost, STARTUP_OPTION is applied."""
        self.generation += 1
        self.state = STATE_HOLD
        self.af_endpoints = {}
        self.permit_until = 0.0
        self.permit_token = 0
        self.zcl_tsn = random.randrange(256)
        self._apply_startup_options()
        chanlist = int.from_bytes(self.nv.items[NV_CHANLIST], "little")
        self.bdb_primary = chanlist
        self.bdb_secondary = 0
        if announce:
            self.booting_until = self.loop.time() + RESET_DELAY
            if glitch:
                # The UART line glitches while the chip resets: one stray byte.
                self.raw(b"\x00")
            self.later(RESET_DELAY, lambda: self.send(c.SYS.ResetInd.Callback(
                Reason=reason, **VERSION)))

    def _apply_startup_options(self):
        options = self.nv.byte(NV_STARTUP_OPTION)
        if options & STARTUP_CLEAR_STATE:
            LOG.info("STARTUP_OPTION clear state: leaving the network")
            self.nv.network = None
            self.nv.devices = {}
            self.nv.items[NV_BDBNODEISONANETWORK] = b"\x00"
        if options & STARTUP_CLEAR_CONFIG:
            LOG.info("STARTUP_OPTION clear config: configuration items to defaults")
            for item, value in CONFIG_DEFAULTS.items():
                if item != NV_BDBNODEISONANETWORK:
                    self.nv.items[item] = value
        if options & (STARTUP_CLEAR_STATE | STARTUP_CLEAR_CONFIG):
            remaining = options & ~(STARTUP_CLEAR_STATE | STARTUP_CLEAR_CONFIG)
            self.nv.items[NV_STARTUP_OPTION] = bytes([remaining])
            self.nv.save()

    # ---- sending ------------------------------------------------------------

    def later(self, delay, fn):
        """Runs fn after delay unless the stick rebooted meanwhile."""
        generation = self.generation

        def run():
            if generation != self.generation or self.unplugged:
                return
            try:
                fn()
            except Exception:
                LOG.error("simulator error:\n%s", traceback.format_exc())

        self.loop.call_later(delay, run)

    def send(self, command):
        frame = command if isinstance(command, GeneralFrame) else command.to_frame()
        if self.silent or self.unplugged:
            LOG.info("--> (silent, not sent) %s", command)
            return
        data = TransportFrame(frame).serialize()
        LOG.info("--> %s  %s", hexdump(data), command)
        self.line.write(data)

    def raw(self, data):
        if self.silent or self.unplugged:
            return
        LOG.info("--> raw %s", hexdump(data))
        self.line.write(data)

    # ---- receiving ----------------------------------------------------------

    def frame_received(self, frame):
        header = frame.header
        name = request_name(header)
        data = TransportFrame(frame).serialize()
        if self.unplugged:
            return
        if header.type not in (t.CommandType.SREQ, t.CommandType.AREQ):
            LOG.info("<-- %s  %s: not a request, ignored", hexdump(data), name)
            return
        self.counts[name] = self.counts.get(name, 0) + 1
        cmd = REQUESTS.get(header)
        try:
            request = cmd.from_frame(frame) if cmd is not None else None
        except Exception as e:
            LOG.info("<-- %s  %s: malformed (%s)", hexdump(data), name, e)
            if header.type == t.CommandType.SREQ and not self.silent and not self._booting():
                self.send(c.RPCError.CommandNotRecognized.Rsp(
                    ErrorCode=c.rpc_error.ErrorCode.InvalidLength, RequestHeader=header))
            return
        LOG.info("<-- %s  %s", hexdump(data), request if request is not None else name)
        if self.silent:
            LOG.info("    (silent: no answer)")
            return
        if self._booting():
            LOG.info("    (rebooting: lost)")
            return
        handler = self.handlers.get(header)
        if handler is None:
            if header.type == t.CommandType.SREQ:
                known = cmd is not None
                LOG.info("    %s: answering RPC error", "not simulated" if known else "unknown")
                if t.Subsystem(header.subsystem) in SUPPORTED_SUBSYSTEMS:
                    code = c.rpc_error.ErrorCode.InvalidCommandId
                else:
                    code = c.rpc_error.ErrorCode.InvalidSubsystem
                self.send(c.RPCError.CommandNotRecognized.Rsp(ErrorCode=code, RequestHeader=header))
            return
        try:
            response = handler(request)
        except Exception:
            LOG.error("simulator error handling %s:\n%s", request, traceback.format_exc())
            return
        if response is not None:
            self.send(response)

    def _booting(self):
        return self.loop.time() < self.booting_until

    def _handlers(self):
        h = {}

        def on(cmd, fn):
            h[cmd.Req.header] = fn

        on(c.SYS.ResetReq, self.on_reset_req)
        on(c.SYS.Ping, lambda r: r.Rsp(Capabilities=CAPABILITIES))
        on(c.SYS.Version, lambda r: r.Rsp(
            **VERSION, CodeRevision=CODE_REVISION,
            BootloaderBuildType=c.sys.BootloaderBuildType.NON_BOOTLOADER_BUILD,
            BootloaderRevision=0xFFFFFFFF))
        on(c.SYS.GetExtAddr, lambda r: r.Rsp(ExtAddr=eui64(self.nv.ieee)))
        on(c.SYS.OSALNVRead, self.on_nv_read)
        on(c.SYS.OSALNVReadExt, self.on_nv_read)
        on(c.SYS.OSALNVWrite, self.on_nv_write)
        on(c.SYS.OSALNVWriteExt, self.on_nv_write)
        on(c.SYS.OSALNVItemInit, self.on_nv_item_init)
        on(c.SYS.OSALNVLength, lambda r: r.Rsp(ItemLen=len(self.nv.items.get(r.Id, b""))))
        on(c.SYS.OSALNVDelete, self.on_nv_delete)
        on(c.SYS.SetTxPower, lambda r: r.Rsp(StatusOrPower=ST_SUCCESS))
        on(c.UTIL.GetDeviceInfo, self.on_device_info)
        on(c.UTIL.LEDControl, lambda r: None)  # Z-Stack 3.x.0: no SRSP at all
        on(SAPIWire.ZBWriteConfiguration, self.on_write_configuration)
        on(c.SAPI.ZBReadConfiguration, self.on_read_configuration)
        on(c.AppConfig.BDBSetChannel, self.on_bdb_set_channel)
        on(c.AppConfig.BDBStartCommissioning, self.on_bdb_start_commissioning)
        on(c.AppConfig.BDBSetTcRequireKeyExchange, lambda r: r.Rsp(Status=ST_SUCCESS))
        on(c.ZDO.StartupFromApp, self.on_startup_from_app)
        on(c.ZDO.MgmtPermitJoinReq, self.on_permit_join)
        on(c.ZDO.NodeDescReq, self.on_node_desc_req)
        on(c.ZDO.ActiveEpReq, self.on_active_ep_req)
        on(c.ZDO.SimpleDescReq, self.on_simple_desc_req)
        on(c.ZDO.BindReq, self.on_bind_req)
        on(c.ZDO.UnBindReq, self.on_bind_req)
        on(c.ZDO.MgmtLeaveReq, self.on_leave_req)
        on(c.ZDO.IEEEAddrReq, self.on_ieee_addr_req)
        on(c.ZDO.NwkAddrReq, self.on_nwk_addr_req)
        on(c.ZDO.ExtRouteChk, lambda r: r.Rsp(Status=c.zdo.RoutingStatus.SUCCESS))
        on(c.ZDO.MsgCallbackRegister, lambda r: r.Rsp(Status=ST_SUCCESS))
        on(c.AF.Register, self.on_af_register)
        on(c.AF.Delete, self.on_af_delete)
        on(c.AF.DataRequest, self.on_data_request)
        on(c.AF.DataRequestExt, self.on_data_request)
        return h

    # ---- SYS / NV -----------------------------------------------------------

    def on_reset_req(self, req):
        LOG.info("    resetting (%s)", req.Type)
        self.boot(t.ResetReason.PowerUp, announce=True, glitch=True)

    def on_nv_read(self, req):
        value = self.nv.items.get(req.Id)
        if value is None or req.Offset > len(value) or (value and req.Offset == len(value)):
            return req.Rsp(Status=ST_NV_OPER_FAILED, Value=t.ShortBytes(b""))
        return req.Rsp(Status=ST_SUCCESS, Value=t.ShortBytes(value[req.Offset:req.Offset + 246]))

    def on_nv_write(self, req):
        value = self.nv.items.get(req.Id)
        if value is None:
            return req.Rsp(Status=ST_NV_ITEM_UNINIT)
        # SYS_OSAL_NV_WRITE ignores its offset on Z-Stack (zigpy-znp found out);
        # SYS_OSAL_NV_WRITE_EXT honours it.
        offset = req.Offset if isinstance(req, c.SYS.OSALNVWriteExt.Req) else 0
        if offset + len(req.Value) > len(value):
            return req.Rsp(Status=ST_NV_OPER_FAILED)
        value = bytearray(value)
        value[offset:offset + len(req.Value)] = req.Value
        self.nv.items[req.Id] = bytes(value)
        self.nv.save()
        return req.Rsp(Status=ST_SUCCESS)

    def on_nv_item_init(self, req):
        if req.Id in self.nv.items:
            return req.Rsp(Status=ST_SUCCESS)
        if len(req.Value) > req.ItemLen or req.ItemLen == 0:
            return req.Rsp(Status=ST_INVALID_PARAMETER)
        self.nv.items[req.Id] = bytes(req.Value).ljust(req.ItemLen, b"\xff")
        self.nv.save()
        return req.Rsp(Status=ST_NV_ITEM_UNINIT)

    def on_nv_delete(self, req):
        value = self.nv.items.get(req.Id)
        if value is None:
            return req.Rsp(Status=ST_NV_ITEM_UNINIT)
        if req.ItemLen != len(value):
            return req.Rsp(Status=ST_NV_BAD_ITEM_LEN)
        del self.nv.items[req.Id]
        self.nv.save()
        return req.Rsp(Status=ST_SUCCESS)

    def on_write_configuration(self, req):
        value = self.nv.items.get(req.ConfigId)
        if value is None or len(req.Value) > len(value) or not req.Value:
            return req.Rsp(Status=ST_FAILURE)
        value = bytearray(value)
        value[:len(req.Value)] = req.Value
        self.nv.items[req.ConfigId] = bytes(value)
        self.nv.save()
        return req.Rsp(Status=ST_SUCCESS)

    def on_read_configuration(self, req):
        value = self.nv.items.get(req.ConfigId)
        if value is None:
            return req.Rsp(Status=ST_FAILURE, ConfigId=req.ConfigId, Value=t.ShortBytes(b""))
        return req.Rsp(Status=ST_SUCCESS, ConfigId=req.ConfigId, Value=t.ShortBytes(value))

    def on_device_info(self, req):
        return req.Rsp(
            Status=ST_SUCCESS,
            IEEE=eui64(self.nv.ieee),
            NWK=0x0000 if self.nv.network else 0xFFFE,
            DeviceType=t.DeviceTypeCapabilities(0x07),
            DeviceState=self.state,
            AssociatedDevices=[],
        )

    # ---- starting the network ----------------------------------------------

    def set_state(self, state):
        self.state = state
        self.send(c.ZDO.StateChangeInd.Callback(State=state))

    def bdb_notification(self, status, mode, remaining):
        """`mode` is Z-Stack's bdbCommissioningMode enum (0 initialization,
        1 steering, 2 formation, 3 finding & binding, 4 touchlink, 5 parent
        lost), `remaining` a bitmask of BDB_COMMISSIONING_MODE_* (0x04
        formation); zigpy-znp decodes both as the bitmask."""
        m = c.app_config.BDBCommissioningMode
        self.send(c.AppConfig.BDBCommissioningNotification.Callback(
            Status=status, Mode=m(mode), RemainingModes=m(remaining)))

    def on_bdb_set_channel(self, req):
        if req.IsPrimary:
            self.bdb_primary = int(req.Channel)
        else:
            self.bdb_secondary = int(req.Channel)
        return req.Rsp(Status=ST_SUCCESS)

    def on_bdb_start_commissioning(self, req):
        s = c.app_config.BDBCommissioningStatus
        mode = int(req.Mode)
        if not mode & 0x04:
            # Steering/finding-binding/touchlink are not simulated: reported done.
            done = {0x02: 1, 0x08: 3, 0x01: 4, 0x10: 4}.get(mode & -mode, 0)
            self.later(FORMATION_STEPS[0], lambda: self.bdb_notification(
                s.Success if self.state == STATE_STARTED else s.NoNetwork, done, 0))
            return req.Rsp(Status=ST_SUCCESS)
        if self.nv.network is not None:
            # Already on a network: the network is restored (initialization),
            # and formation fails since there is one.
            def restored():
                if self.state != STATE_STARTED:
                    self.set_state(STATE_STARTED)
                self.bdb_notification(s.NetworkRestored, 0x00, 0x04)
                self.bdb_notification(s.FormationFailure, 0x02, 0x00)
            self.later(FORMATION_STEPS[1], restored)
            return req.Rsp(Status=ST_SUCCESS)
        channel = lowest_channel(self.bdb_primary) or lowest_channel(self.bdb_secondary)
        if self.nv.byte(NV_LOGICAL_TYPE) != 0 or channel is None:
            LOG.info("    formation impossible (logical type %d, channels %08x/%08x)",
                     self.nv.byte(NV_LOGICAL_TYPE), self.bdb_primary, self.bdb_secondary)
            self.later(FORMATION_STEPS[2], lambda: self.bdb_notification(
                s.FormationFailure, 0x02, 0x00))
            return req.Rsp(Status=ST_SUCCESS)
        # As a CC2652 reports it: formation (2) in progress, formation (0x04) remaining.
        self.later(FORMATION_STEPS[0], lambda: self.bdb_notification(s.InProgress, 0x02, 0x04))
        self.later(FORMATION_STEPS[1], lambda: self.set_state(STATE_STARTING))
        self.later(FORMATION_STEPS[2], lambda: self.formed(channel))
        return req.Rsp(Status=ST_SUCCESS)

    def formed(self, channel):
        items = self.nv.items
        pan_id = int.from_bytes(items[NV_PANID], "little")
        if pan_id in (0xFFFF, 0xFFFE, 0x0000):
            pan_id = random.randrange(0x0001, 0x3FFF)
        epid = items[NV_EXTENDED_PAN_ID]
        if epid in (bytes(8), b"\xff" * 8):
            epid = self.nv.ieee.to_bytes(8, "little")
        if self.nv.byte(NV_PRECFGKEYS_ENABLE):
            key = items[NV_PRECFGKEY]
        else:
            # Without pre-configured keys the trust center makes up a key.
            key = random.randbytes(16)
        self.nv.network = {
            "channel": channel,
            "pan_id": pan_id,
            "extended_pan_id": int.from_bytes(epid, "little"),
            "network_key": key.hex(),
        }
        items[NV_BDBNODEISONANETWORK] = b"\x01"
        self.nv.save()
        LOG.info("    formed: channel %d, PAN 0x%04X, EPID %016x", channel, pan_id,
                 self.nv.network["extended_pan_id"])
        self.set_state(STATE_STARTED)
        self.bdb_notification(c.app_config.BDBCommissioningStatus.Success, 0x02, 0x00)

    def on_startup_from_app(self, req):
        startup = c.zdo.StartupState
        if self.nv.network is None:
            return req.Rsp(State=startup.NewNetworkState)
        if self.state != STATE_STARTED:
            delay = min(max(req.StartDelay / 1000.0, STARTUP_MIN_DELAY), 5.0)
            self.later(delay, lambda: self.set_state(STATE_STARTED))
        return req.Rsp(State=startup.RestoredNetworkState)

    # ---- permit join ----------------------------------------------------------

    def open_permit_join(self, duration):
        self.permit_token += 1
        token = self.permit_token
        self.permit_until = self.loop.time() + duration if duration else 0.0
        self.send(c.ZDO.PermitJoinInd.Callback(Duration=duration))
        if duration:
            def close():
                if token == self.permit_token:
                    self.permit_until = 0.0
                    LOG.info("    permit join closed (timeout)")
                    self.send(c.ZDO.PermitJoinInd.Callback(Duration=0))
            self.later(duration, close)

    def permit_join_remaining(self):
        remaining = self.permit_until - self.loop.time()
        return max(0, math.ceil(remaining)) if self.permit_until else 0

    def on_permit_join(self, req):
        # Zigbee R21+: 0xFF no longer means "for ever" but 254 s.
        duration = min(int(req.Duration), 254)
        coordinator = req.Dst in (0x0000, 0xFFFC, 0xFFFD, 0xFFFF)
        if self.state != STATE_STARTED:
            return req.Rsp(Status=ST_FAILURE)
        if coordinator:
            def answer():
                self.send(c.ZDO.MgmtPermitJoinRsp.Callback(Src=0x0000, Status=ZDP_SUCCESS))
                self.open_permit_join(duration)
            self.later(AREQ_DELAY, answer)
        else:
            device = self.device_by_nwk(req.Dst)
            if device is not None:
                self.later(AREQ_DELAY, lambda: self.send(c.ZDO.MgmtPermitJoinRsp.Callback(
                    Src=device["nwk"], Status=ZDP_SUCCESS)))
        return req.Rsp(Status=ST_SUCCESS)

    # ---- devices --------------------------------------------------------------

    def device_by_nwk(self, nwk):
        if self.state != STATE_STARTED:
            return None
        for device in self.nv.devices.values():
            if device["nwk"] == nwk:
                return device
        return None

    def device_by_ieee(self, ieee):
        return self.nv.devices.get("%016x" % ieee)

    def mac_capabilities(self, device):
        # Allocate address | RX on when idle | mains powered | (router)
        return 0x8E if device["router"] else 0x80

    def node_descriptor(self, device):
        return c.zdo.NullableNodeDescriptor(
            logical_type=zdo_t.LogicalType.Router if device["router"] else zdo_t.LogicalType.EndDevice,
            complex_descriptor_available=0,
            user_descriptor_available=0,
            reserved=0,
            aps_flags=0,
            frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
            mac_capability_flags=self.mac_capabilities(device),
            manufacturer_code=device["manufacturer_code"],
            maximum_buffer_size=82,
            maximum_incoming_transfer_size=82,
            server_mask=0x2C00,
            maximum_outgoing_transfer_size=82,
            descriptor_capability_field=0,
        )

    def coordinator_node_descriptor(self):
        return c.zdo.NullableNodeDescriptor(
            byte1=0, byte2=64, mac_capability_flags=143, manufacturer_code=0,
            maximum_buffer_size=80, maximum_incoming_transfer_size=160,
            server_mask=11265, maximum_outgoing_transfer_size=160,
            descriptor_capability_field=0)

    def on_node_desc_req(self, req):
        nwk = req.NWKAddrOfInterest
        if nwk == 0x0000 and self.state == STATE_STARTED:
            self.later(AREQ_DELAY, lambda: self.send(c.ZDO.NodeDescRsp.Callback(
                Src=0x0000, Status=ZDP_SUCCESS, NWK=0x0000,
                NodeDescriptor=self.coordinator_node_descriptor())))
        device = self.device_by_nwk(nwk)
        if device is not None:
            self.later(REPLY_DELAY, lambda: self.send(c.ZDO.NodeDescRsp.Callback(
                Src=nwk, Status=ZDP_SUCCESS, NWK=nwk,
                NodeDescriptor=self.node_descriptor(device))))
        return req.Rsp(Status=ST_SUCCESS)

    def on_active_ep_req(self, req):
        nwk = req.NWKAddrOfInterest
        if nwk == 0x0000 and self.state == STATE_STARTED:
            self.later(AREQ_DELAY, lambda: self.send(c.ZDO.ActiveEpRsp.Callback(
                Src=0x0000, Status=ZDP_SUCCESS, NWK=0x0000,
                ActiveEndpoints=sorted(self.af_endpoints))))
        device = self.device_by_nwk(nwk)
        if device is not None:
            self.later(REPLY_DELAY, lambda: self.send(c.ZDO.ActiveEpRsp.Callback(
                Src=nwk, Status=ZDP_SUCCESS, NWK=nwk, ActiveEndpoints=[device["endpoint"]])))
        return req.Rsp(Status=ST_SUCCESS)

    def simple_desc_rsp(self, src, nwk, descriptor):
        if descriptor is None:
            # An unknown endpoint: ZDP INVALID_EP and an empty descriptor.
            header = c.ZDO.SimpleDescRsp.Callback.header
            data = t.NWK(src).serialize() + bytes([ZDP_INVALID_EP]) + t.NWK(nwk).serialize() + b"\x00"
            return GeneralFrame(header, data)
        return c.ZDO.SimpleDescRsp.Callback(
            Src=src, Status=ZDP_SUCCESS, NWK=nwk,
            SimpleDescriptor=zdo_t.SizePrefixedSimpleDescriptor(**descriptor))

    def on_simple_desc_req(self, req):
        nwk = req.NWKAddrOfInterest
        if nwk == 0x0000 and self.state == STATE_STARTED:
            reg = self.af_endpoints.get(req.Endpoint)
            descriptor = None if reg is None else dict(
                endpoint=reg.Endpoint, profile=reg.ProfileId, device_type=reg.DeviceId,
                device_version=reg.DeviceVersion, input_clusters=list(reg.InputClusters),
                output_clusters=list(reg.OutputClusters))
            self.later(AREQ_DELAY, lambda: self.send(self.simple_desc_rsp(0x0000, 0x0000, descriptor)))
        device = self.device_by_nwk(nwk)
        if device is not None:
            descriptor = None
            if req.Endpoint == device["endpoint"]:
                descriptor = dict(
                    endpoint=device["endpoint"], profile=PROFILE_HA,
                    device_type=device["device_id"], device_version=1,
                    input_clusters=device["in_clusters"], output_clusters=device["out_clusters"])
            self.later(REPLY_DELAY, lambda: self.send(self.simple_desc_rsp(nwk, nwk, descriptor)))
        return req.Rsp(Status=ST_SUCCESS)

    def on_bind_req(self, req):
        unbind = isinstance(req, c.ZDO.UnBindReq.Req)
        device = self.device_by_nwk(req.Dst)
        if device is not None:
            status = ZDP_SUCCESS
            if ieee_int(req.Src) != int(device["ieee"], 16) or req.SrcEndpoint != device["endpoint"]:
                status = ZDP_INVALID_EP
            elif req.ClusterId not in device["in_clusters"] + device["out_clusters"]:
                status = ZDP_NOT_SUPPORTED
            else:
                address = req.Address
                if address.addrmode == 0x03:
                    entry = {"cluster": int(req.ClusterId), "mode": 3,
                             "address": ieee_int(address.ieee), "endpoint": int(address.endpoint)}
                else:  # a group
                    entry = {"cluster": int(req.ClusterId), "mode": 1,
                             "address": int(address.nwk), "endpoint": 0}
                bindings = device.setdefault("bindings", [])
                if unbind:
                    if entry in bindings:
                        bindings.remove(entry)
                    else:
                        status = ZDP_NO_ENTRY
                elif entry not in bindings:
                    bindings.append(entry)
                self.nv.save()
            callback = c.ZDO.UnBindRsp.Callback if unbind else c.ZDO.BindRsp.Callback
            self.later(REPLY_DELAY, lambda: self.send(callback(Src=req.Dst, Status=status)))
        return req.Rsp(Status=ST_SUCCESS)

    def on_leave_req(self, req):
        device = self.device_by_nwk(req.DstAddr)
        if device is not None:
            rejoin = bool(int(req.RemoveChildren_Rejoin) & 0x01)

            def leave():
                self.send(c.ZDO.MgmtLeaveRsp.Callback(Src=device["nwk"], Status=ZDP_SUCCESS))
                self.nv.devices.pop(device["ieee"], None)
                self.nv.save()
                self.send(c.ZDO.LeaveInd.Callback(
                    NWK=device["nwk"], IEEE=eui64(int(device["ieee"], 16)),
                    Request=t.Bool(False), Remove=t.Bool(False), Rejoin=t.Bool(rejoin)))
            self.later(REPLY_DELAY, leave)
        return req.Rsp(Status=ST_SUCCESS)

    def on_ieee_addr_req(self, req):
        device = self.device_by_nwk(req.NWK)
        if device is not None:
            self.later(REPLY_DELAY, lambda: self.send(c.ZDO.IEEEAddrRsp.Callback(
                Status=ZDP_SUCCESS, IEEE=eui64(int(device["ieee"], 16)), NWK=device["nwk"],
                NumAssoc=0, Index=0, Devices=[])))
        return req.Rsp(Status=ST_SUCCESS)

    def on_nwk_addr_req(self, req):
        device = self.device_by_ieee(ieee_int(req.IEEE)) if self.state == STATE_STARTED else None
        if device is not None:
            self.later(REPLY_DELAY, lambda: self.send(c.ZDO.NwkAddrRsp.Callback(
                Status=ZDP_SUCCESS, IEEE=req.IEEE, NWK=device["nwk"],
                NumAssoc=0, Index=0, Devices=[])))
        return req.Rsp(Status=ST_SUCCESS)

    # ---- AF -------------------------------------------------------------------

    def on_af_register(self, req):
        if req.Endpoint in self.af_endpoints:
            return req.Rsp(Status=ST_APS_DUPLICATE_ENTRY)
        self.af_endpoints[req.Endpoint] = req
        return req.Rsp(Status=ST_SUCCESS)

    def on_af_delete(self, req):
        if self.af_endpoints.pop(req.Endpoint, None) is None:
            return req.Rsp(Status=ST_INVALID_PARAMETER)
        return req.Rsp(Status=ST_SUCCESS)

    def on_data_request(self, req):
        if req.SrcEndpoint not in self.af_endpoints:
            return req.Rsp(Status=ST_INVALID_PARAMETER)
        if isinstance(req, c.AF.DataRequestExt.Req):
            mode, address = req.DstAddrModeAddress.mode, req.DstAddrModeAddress.address
            if mode == t.AddrMode.IEEE:
                device = self.device_by_ieee(ieee_int(address)) if self.state == STATE_STARTED else None
                targets = [device] if device else []
                broadcast = False
            elif mode == t.AddrMode.NWK:
                device = self.device_by_nwk(address)
                targets, broadcast = ([device] if device else []), False
            elif mode == t.AddrMode.Broadcast:
                targets, broadcast = list(self.nv.devices.values()) if self.state == STATE_STARTED else [], True
            else:  # groups are not simulated
                targets, broadcast = [], True
        else:
            broadcast = req.DstAddr >= 0xFFF8
            if broadcast:
                targets = list(self.nv.devices.values()) if self.state == STATE_STARTED else []
            else:
                device = self.device_by_nwk(req.DstAddr)
                targets = [device] if device else []
        src_ep, tsn = req.SrcEndpoint, req.TSN
        if not targets and not broadcast:
            self.later(NO_ROUTE_DELAY, lambda: self.send(c.AF.DataConfirm.Callback(
                Status=ST_NWK_NO_ROUTE, Endpoint=src_ep, TSN=tsn)))
            return req.Rsp(Status=ST_SUCCESS)
        self.later(CONFIRM_DELAY, lambda: self.send(c.AF.DataConfirm.Callback(
            Status=ST_SUCCESS, Endpoint=src_ep, TSN=tsn)))
        for device in targets:
            if req.DstEndpoint in (device["endpoint"], 0xFF):
                self.device_receives(device, req.ClusterId, src_ep, bytes(req.Data), broadcast)
        return req.Rsp(Status=ST_SUCCESS)

    def incoming(self, device, cluster, dst_ep, data, lqi=None):
        """AF_INCOMING_MSG from a device, if the host registered dst_ep
        (Z-Stack drops messages for unregistered endpoints)."""
        if self.state != STATE_STARTED:
            LOG.info("    message from %s dropped: network not started", device["ieee"])
            return False
        if dst_ep not in self.af_endpoints:
            LOG.info("    message from %s to endpoint %d dropped: endpoint not registered",
                     device["ieee"], dst_ep)
            return False
        self.send(c.AF.IncomingMsg.Callback(
            GroupId=0x0000, ClusterId=cluster, SrcAddr=device["nwk"],
            SrcEndpoint=device["endpoint"], DstEndpoint=dst_ep, WasBroadcast=t.Bool(False),
            LQI=device.get("lqi", 120) if lqi is None else lqi, SecurityUse=t.Bool(False),
            TimeStamp=int((time.monotonic() - self.started_at) * 1000) & 0xFFFFFFFF,
            TSN=0, Data=t.ShortBytes(data), MacSrcAddr=device["nwk"], MsgResultRadius=29))
        return True

    def report_endpoint(self, device, cluster):
        """Where the device sends reports: the endpoint of its binding to the
        coordinator for that cluster, else 1."""
        for binding in device.get("bindings", []):
            if binding["cluster"] == cluster and binding["mode"] == 3 \
                    and binding["address"] == self.nv.ieee:
                return binding["endpoint"]
        return 1

    # ---- the devices' ZCL -----------------------------------------------------

    def next_tsn(self, device):
        device["zcl_tsn"] = (device.get("zcl_tsn", 0) + 1) & 0xFF
        return device["zcl_tsn"]

    def attribute(self, device, cluster, attr):
        return device["attributes"].get(str(cluster), {}).get(str(attr))

    def set_attribute(self, device, cluster, attr, type_id, value):
        device["attributes"].setdefault(str(cluster), {})[str(attr)] = [type_id, value]

    @staticmethod
    def general_header(tsn, command, manufacturer=None):
        fc = foundation.FrameControl(
            frame_type=foundation.FrameType.GLOBAL_COMMAND,
            is_manufacturer_specific=manufacturer is not None,
            direction=foundation.Direction.Server_to_Client,
            disable_default_response=1, reserved=0)
        return foundation.ZCLHeader(frame_control=fc, manufacturer=manufacturer, tsn=tsn,
                                    command_id=command).serialize()

    def zcl_reply(self, device, cluster, dst_ep, tsn, command, body, manufacturer=None):
        data = self.general_header(tsn, command, manufacturer) + body
        self.later(REPLY_DELAY, lambda: self.incoming(device, cluster, dst_ep, data))

    def default_response(self, device, cluster, dst_ep, hdr, status):
        body = foundation.DefaultResponse(command_id=hdr.command_id, status=status).serialize()
        self.zcl_reply(device, cluster, dst_ep, hdr.tsn, foundation.GeneralCommand.Default_Response,
                       body, hdr.manufacturer)

    def report_data(self, device, records):
        reports = [foundation.Attribute(attrid=attr, value=foundation.TypeValue(
            type=type_id, value=zcl_value(type_id, value))) for attr, type_id, value in records]
        body = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Report_Attributes].schema(
            attribute_reports=reports).serialize()
        return self.general_header(self.next_tsn(device), foundation.GeneralCommand.Report_Attributes) + body

    def device_receives(self, device, cluster, src_ep, data, broadcast):
        try:
            hdr, payload = foundation.ZCLHeader.deserialize(data)
        except Exception as e:
            LOG.info("    %s: not a ZCL frame (%s), ignored", device["ieee"], e)
            return
        answer = not broadcast
        if cluster not in device["in_clusters"] and not (
                cluster in device["out_clusters"] and hdr.frame_control.is_general):
            if answer:
                self.default_response(device, cluster, src_ep, hdr,
                                      foundation.Status.UNSUPPORTED_CLUSTER)
            return
        if hdr.frame_control.is_general:
            self.general_command(device, cluster, src_ep, hdr, payload, answer)
        else:
            self.cluster_command(device, cluster, src_ep, hdr, payload, answer)
        self.nv.save()

    def general_command(self, device, cluster, src_ep, hdr, payload, answer):
        cmd = hdr.command_id
        g = foundation.GeneralCommand
        if cmd == g.Read_Attributes:
            request, _ = foundation.GENERAL_COMMANDS[cmd].schema.deserialize(payload)
            records = []
            for attr in request.attribute_ids:
                stored = self.attribute(device, cluster, attr)
                if stored is None or hdr.manufacturer is not None:
                    records.append(foundation.ReadAttributeRecord(
                        attrid=attr, status=foundation.Status.UNSUPPORTED_ATTRIBUTE))
                else:
                    type_id, value = stored
                    records.append(foundation.ReadAttributeRecord(
                        attrid=attr, status=foundation.Status.SUCCESS,
                        value=foundation.TypeValue(type=type_id, value=zcl_value(type_id, value))))
            body = foundation.ReadAttributesResponse(status_records=records).serialize()
            if answer:
                self.zcl_reply(device, cluster, src_ep, hdr.tsn, g.Read_Attributes_rsp, body,
                               hdr.manufacturer)
        elif cmd in (g.Write_Attributes, g.Write_Attributes_Undivided, g.Write_Attributes_No_Response):
            request, _ = foundation.GENERAL_COMMANDS[cmd].schema.deserialize(payload)
            for record in request.attributes:
                value = record.value.value
                if isinstance(value, (bytes, bytearray)) and not isinstance(value, str):
                    value = bytes(value).hex()
                elif isinstance(value, zt.EUI64):
                    value = ieee_int(value)
                elif isinstance(value, float):
                    value = float(value)
                elif isinstance(value, str):
                    value = str(value)
                else:
                    value = int(value)
                self.set_attribute(device, cluster, record.attrid, int(record.value.type), value)
            if cmd != g.Write_Attributes_No_Response and answer:
                self.zcl_reply(device, cluster, src_ep, hdr.tsn, g.Write_Attributes_rsp, b"\x00",
                               hdr.manufacturer)
            if cluster == IAS_ZONE and any(r.attrid == 0x0010 for r in request.attributes):
                self.enroll_request(device, src_ep)
        elif cmd == g.Configure_Reporting:
            request, _ = foundation.GENERAL_COMMANDS[cmd].schema.deserialize(payload)
            failed = []
            for record in request.config_records:
                if self.attribute(device, cluster, record.attrid) is None:
                    failed.append(foundation.ConfigureReportingResponseRecord(
                        status=foundation.Status.UNSUPPORTED_ATTRIBUTE,
                        direction=record.direction, attrid=record.attrid))
                    continue
                if record.direction == foundation.ReportingDirection.SendReports:
                    device.setdefault("reporting", {})["%d/%d" % (cluster, record.attrid)] = [
                        record.min_interval, record.max_interval]
            records = failed or [foundation.ConfigureReportingResponseRecord(
                status=foundation.Status.SUCCESS)]
            body = foundation.ConfigureReportingResponse(records).serialize()
            if answer:
                self.zcl_reply(device, cluster, src_ep, hdr.tsn, g.Configure_Reporting_rsp, body,
                               hdr.manufacturer)
        elif cmd == g.Default_Response:
            pass
        elif answer:
            self.default_response(device, cluster, src_ep, hdr,
                                  foundation.Status.UNSUP_GENERAL_COMMAND)

    def cluster_command(self, device, cluster, src_ep, hdr, payload, answer):
        cmd = hdr.command_id
        status = foundation.Status.SUCCESS
        changed = []
        cluster_cls = zigpy.zcl.Cluster._registry.get(cluster)
        definition = None if cluster_cls is None or hdr.manufacturer is not None \
            else cluster_cls.server_commands.get(cmd)
        args = None
        if definition is not None:
            try:
                args, _ = definition.schema.deserialize(payload)
            except Exception:
                status = foundation.Status.MALFORMED_COMMAND
        on = self.attribute(device, ON_OFF, 0)
        level = self.attribute(device, LEVEL, 0)
        if status != foundation.Status.SUCCESS:
            pass
        elif cluster == ON_OFF and cmd in (0x00, 0x01, 0x02, 0x40, 0x41, 0x42):
            new = {0x00: False, 0x40: False, 0x01: True, 0x41: True, 0x42: True}.get(
                cmd, not (on and on[1]))
            changed += self.change(device, ON_OFF, 0x0000, new)
        elif cluster == LEVEL and cmd in range(0x00, 0x08):
            current = level[1] if level else 254
            with_on_off = cmd >= 0x04
            if cmd in (0x00, 0x04):
                new = args.level
            elif cmd in (0x01, 0x05):
                new = 254 if int(args.move_mode) == 0 else 1
            elif cmd in (0x02, 0x06):
                step = args.step_size if int(args.step_mode) == 0 else -args.step_size
                new = max(1, min(254, current + step))
            else:
                new = current
            new = min(int(new), 254)
            changed += self.change(device, LEVEL, 0x0000, new)
            if with_on_off and cmd not in (0x03, 0x07) and ON_OFF in device["in_clusters"]:
                changed += self.change(device, ON_OFF, 0x0000, new > 1 if cmd in (0x02, 0x06) else new > 0)
        elif cluster == IAS_ZONE and cmd == 0x00:
            if int(args.enroll_response_code) == 0:
                self.change(device, IAS_ZONE, 0x0000, 1)
                self.change(device, IAS_ZONE, 0x0011, int(args.zone_id))
        else:
            status = foundation.Status.UNSUP_CLUSTER_COMMAND
        if answer and (status != foundation.Status.SUCCESS or not hdr.frame_control.disable_default_response):
            self.default_response(device, cluster, src_ep, hdr, status)
        # Lights report their new state (on change), as real bulbs do.
        by_cluster = {}
        for cl, attr, type_id, value in changed:
            by_cluster.setdefault(cl, []).append((attr, type_id, value))
        for cl, records in by_cluster.items():
            data = self.report_data(device, records)
            dst_ep = self.report_endpoint(device, cl)
            self.later(REPORT_DELAY, lambda cl=cl, data=data, dst_ep=dst_ep: self.incoming(
                device, cl, dst_ep, data))

    def change(self, device, cluster, attr, value):
        stored = self.attribute(device, cluster, attr)
        if stored is None:
            return []
        type_id = stored[0]
        if stored[1] == value:
            return []
        self.set_attribute(device, cluster, attr, type_id, value)
        return [(cluster, attr, type_id, value)]

    def enroll_request(self, device, dst_ep):
        zone_type = self.attribute(device, IAS_ZONE, 0x0001)
        cluster_cls = zigpy.zcl.Cluster._registry[IAS_ZONE]
        body = cluster_cls.client_commands[0x01].schema(
            zone_type=zone_type[1] if zone_type else 0x0015,
            manufacturer_code=device["manufacturer_code"]).serialize()
        hdr = foundation.ZCLHeader.cluster(
            tsn=self.next_tsn(device), command_id=0x01,
            direction=foundation.Direction.Server_to_Client).serialize()
        self.later(REPORT_DELAY, lambda: self.incoming(device, IAS_ZONE, dst_ep, hdr + body))

    # ---- the test's controls ---------------------------------------------------

    def control(self, request):
        cmd = request["cmd"]
        if cmd == "ping":
            return "pong"
        if cmd == "unplug":
            self.unplugged = True
            self.line.stop_reading()
            self.nv.save()
            return self.counts
        if cmd == "counts":
            return self.counts
        if cmd == "requests":
            return self.counts.get(normalize_name(request["name"]), 0)
        if cmd == "network":
            network = self.nv.network
            if network is None:
                return None
            return [network["channel"], network["pan_id"], network["extended_pan_id"],
                    list(bytes.fromhex(network["network_key"]))]
        if cmd == "permit_join":
            return self.permit_join_remaining()
        if cmd == "join":
            return self.join(request["device"])
        if cmd == "report":
            return self.report(request)
        if cmd == "zone_status":
            return self.zone_status(request)
        if cmd == "frame":
            return self.frame(request)
        if cmd == "reset":
            LOG.info("=== the stick resets by itself (watchdog)")
            self.boot(t.ResetReason.Watchdog, announce=True)
            return None
        if cmd == "silent":
            self.silent = bool(request["silent"])
            LOG.info("=== silent: %s", self.silent)
            return None
        if cmd == "garbage":
            data = bytes(request["bytes"])
            if self.silent:
                return None
            LOG.info("--> garbage %s", hexdump(data))
            self.line.write(data)
            return None
        if cmd in ("on_off", "level"):
            device = self.device_by_ieee(request["ieee"])
            if device is None:
                return None
            stored = self.attribute(device, ON_OFF if cmd == "on_off" else LEVEL, 0)
            if stored is None:
                return None
            return bool(stored[1]) if cmd == "on_off" else int(stored[1])
        if cmd == "devices":
            return [int(ieee, 16) for ieee in self.nv.devices]
        if cmd == "attribute":
            device = self.known_device(request["ieee"])
            stored = self.attribute(device, int(request["cluster"]), int(request["attribute"]))
            return None if stored is None else stored[1]
        raise ValueError("unknown control command %r" % cmd)

    def join(self, spec):
        if self.state != STATE_STARTED:
            LOG.info("=== join of %016x refused: network not started", spec["ieee"])
            return False
        if not self.permit_join_remaining():
            LOG.info("=== join of %016x refused: permit join closed", spec["ieee"])
            return False
        key = "%016x" % spec["ieee"]
        name = spec["manufacturer"].lower()
        code = next((v for k, v in MANUFACTURER_CODES.items() if name.startswith(k)), 0x1234)
        in_clusters = [int(x) for x in spec["in_clusters"]]
        device = {
            "ieee": key, "nwk": int(spec["nwk"]), "manufacturer": spec["manufacturer"],
            "model": spec["model"], "endpoint": int(spec["endpoint"]),
            "device_id": int(spec["device_id"]), "in_clusters": in_clusters,
            "out_clusters": [int(x) for x in spec["out_clusters"]],
            "router": ON_OFF in in_clusters or LEVEL in in_clusters,
            "manufacturer_code": code, "bindings": [], "zcl_tsn": random.randrange(256),
        }
        old = self.nv.devices.get(key)
        device["attributes"] = old["attributes"] if old else default_attributes(device)
        self.nv.devices[key] = device
        self.nv.save()
        LOG.info("=== %016x joins as 0x%04X", spec["ieee"], device["nwk"])
        ieee = eui64(spec["ieee"])
        self.send(c.ZDO.TCDevInd.Callback(SrcNwk=device["nwk"], SrcIEEE=ieee, ParentNwk=0x0000))
        self.later(AREQ_DELAY, lambda: self.send(c.ZDO.EndDeviceAnnceInd.Callback(
            Src=device["nwk"], NWK=device["nwk"], IEEE=ieee,
            Capabilities=c.zdo.MACCapabilities(self.mac_capabilities(device)))))
        return True

    def known_device(self, ieee):
        device = self.device_by_ieee(ieee)
        if device is None:
            raise ValueError("device %016x is not on the network: join it first" % ieee)
        return device

    def report(self, request):
        device = self.known_device(request["ieee"])
        cluster = int(request["cluster"])
        records = [(int(a), int(ty), v) for a, ty, v in request["attributes"]]
        for attr, type_id, value in records:
            self.set_attribute(device, cluster, attr, type_id, value)
        device["lqi"] = int(request["lqi"])
        data = self.report_data(device, records)
        self.nv.save()
        LOG.info("=== %s reports on cluster 0x%04X", device["ieee"], cluster)
        return self.incoming(device, cluster, self.report_endpoint(device, cluster), data,
                             lqi=int(request["lqi"]))

    def zone_status(self, request):
        device = self.known_device(request["ieee"])
        if IAS_ZONE not in device["in_clusters"]:
            raise ValueError("device %s has no IAS Zone cluster (0x0500)" % device["ieee"])
        status = int(request["status"])
        self.set_attribute(device, IAS_ZONE, 0x0002, 0x19, status)
        zone_id = self.attribute(device, IAS_ZONE, 0x0011)
        cluster_cls = zigpy.zcl.Cluster._registry[IAS_ZONE]
        body = cluster_cls.client_commands[0x00].schema(
            zone_status=status, extended_status=0,
            zone_id=zone_id[1] if zone_id else 0xFF, delay=0).serialize()
        hdr = foundation.ZCLHeader.cluster(
            tsn=self.next_tsn(device), command_id=0x00,
            direction=foundation.Direction.Server_to_Client).serialize()
        self.nv.save()
        LOG.info("=== %s zone status 0x%04X", device["ieee"], status)
        return self.incoming(device, IAS_ZONE, self.report_endpoint(device, IAS_ZONE), hdr + body)


    def frame(self, request):
        """Any ZCL frame (a manufacturer-specific one, say) from a device."""
        device = self.known_device(request["ieee"])
        cluster = int(request["cluster"])
        data = bytes.fromhex(request["zcl"])
        LOG.info("=== %s sends a frame on cluster 0x%04X", device["ieee"], cluster)
        return self.incoming(device, cluster, self.report_endpoint(device, cluster), data,
                             lqi=int(request["lqi"]))


async def serve_control(stick, path):
    async def client(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    result = {"ok": True, "result": stick.control(json.loads(line))}
                except Exception as e:
                    LOG.error("control %s failed:\n%s", line.strip(), traceback.format_exc())
                    result = {"ok": False, "error": str(e)}
                writer.write(json.dumps(result).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    if os.path.exists(path):
        os.unlink(path)
    return await asyncio.start_unix_server(client, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port")
    parser.add_argument("dir")
    parser.add_argument("--replug", action="store_true",
                        help="announce the power-up with SYS_RESET_IND")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(message)s", datefmt="%H:%M:%S")
    LOG.info("=== znp stick starting on %s (%s)", args.port, "re-plugged" if args.replug else "power-on")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stick = Stick(loop, args.port, args.dir, args.replug)
    loop.run_until_complete(serve_control(stick, os.path.join(args.dir, "znp-stick.sock")))
    LOG.info("=== ready: IEEE %016x, %s", stick.nv.ieee,
             "formed %r" % stick.nv.network if stick.nv.network else "no network")
    loop.run_forever()


if __name__ == "__main__":
    main()
