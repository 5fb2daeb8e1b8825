//! The ZNP commands Kite sends and the responses and indications it reads,
//! typed. Field orders and sizes are those of Z-Stack's MT interface (as
//! zigpy-znp defines them, checked against it by `tests/zigpy_crosscheck.rs`):
//! every multi-byte integer is little-endian, an IEEE address is a u64 sent
//! least significant byte first and shown most significant first
//! (`0x00124b0012345678`).

use thiserror::Error;

use crate::mt::{CommandType, Frame, PayloadTooLong, Subsystem, MAX_PAYLOAD};

/// `ZCD_NV_STARTUP_OPTION`: what to clear at the next start (bit 0 the
/// configuration, bit 1 the network state).
pub const ZCD_NV_STARTUP_OPTION: u8 = 0x03;
/// `ZCD_NV_LOGICAL_TYPE`: 0 coordinator, 1 router, 2 end device.
pub const ZCD_NV_LOGICAL_TYPE: u8 = 0x87;
/// `ZCD_NV_PANID`: the PAN id (u16).
pub const ZCD_NV_PANID: u8 = 0x83;
/// `ZCD_NV_EXTENDED_PAN_ID`: the extended PAN id (8 bytes).
pub const ZCD_NV_EXTENDED_PAN_ID: u8 = 0x2D;
/// `ZCD_NV_CHANLIST`: the channel mask (u32, bit n for channel n).
pub const ZCD_NV_CHANLIST: u8 = 0x84;
/// `ZCD_NV_PRECFGKEY`: the network key (16 bytes).
pub const ZCD_NV_PRECFGKEY: u8 = 0x62;
/// `ZCD_NV_PRECFGKEYS_ENABLE`: whether the network key above is used (bool).
pub const ZCD_NV_PRECFGKEYS_ENABLE: u8 = 0x63;
/// `ZCD_NV_ZDO_DIRECT_CB`: whether ZDO responses come to the host as MT
/// callbacks (bool); Kite needs it set.
pub const ZCD_NV_ZDO_DIRECT_CB: u8 = 0x8F;
/// The NV item in which a Z-Stack 3 coordinator records that it was formed.
pub const NV_HAS_CONFIGURED_ZSTACK3: u16 = 0x0060;
/// The value of [`NV_HAS_CONFIGURED_ZSTACK3`] once the network is formed.
pub const ZSTACK_CONFIGURED: u8 = 0x55;
/// `ZDO_STATE_CHANGE_IND`'s state once the ZNP runs as coordinator.
pub const DEVICE_STATE_STARTED_AS_COORDINATOR: u8 = 9;
/// Address mode of `ZdoMgmtPermitJoinReq` for one device (by NWK address).
pub const ADDR_MODE_NWK: u8 = 0x02;
/// Address mode of `ZdoMgmtPermitJoinReq` for a broadcast (dst 0xFFFC: all
/// routers and the coordinator).
pub const ADDR_MODE_BROADCAST: u8 = 0x0F;
/// BDB commissioning mode: form a network.
pub const BDB_MODE_NWK_FORMATION: u8 = 0x04;
/// BDB commissioning mode: open the network (steering).
pub const BDB_MODE_NWK_STEERING: u8 = 0x02;
/// `AfDataRequest` option: ask for an APS acknowledgement.
pub const AF_OPTION_ACK_REQUEST: u8 = 0x10;
/// `AfDataRequest` option: suppress route discovery for intermediate hops.
pub const AF_OPTION_SUPPRESS_ROUTE_DISCOVERY: u8 = 0x20;
/// `ZdoMgmtLeaveReq` option bit: the device should rejoin.
pub const LEAVE_REJOIN: u8 = 0x01;
/// `ZdoMgmtLeaveReq` option bit: the device's children leave too.
pub const LEAVE_REMOVE_CHILDREN: u8 = 0x02;

/// A request Kite sends to the ZNP: SREQ unless noted, answered at once by
/// an SRSP (see [`srsp_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// AREQ SYS 0x00: reset; answered by `ResetInd` after the restart.
    SysResetReq { soft: bool },
    /// SYS 0x01: is the ZNP there; the SRSP carries its MT capabilities.
    SysPing,
    /// SYS 0x02: transport, product and firmware version.
    SysVersion,
    /// SYS 0x07: create NV item `id` of `len` bytes, initialised with
    /// `init`. The SRSP's status is 0x09 (NV_ITEM_UNINIT) when the item was
    /// created, 0x00 when it already existed.
    SysOsalNvItemInit { id: u16, len: u16, init: Vec<u8> },
    /// SYS 0x08: read NV item `id` from `offset`.
    SysOsalNvRead { id: u16, offset: u8 },
    /// SYS 0x09: write `value` into NV item `id` at `offset`.
    SysOsalNvWrite { id: u16, offset: u8, value: Vec<u8> },
    /// UTIL 0x00: IEEE and NWK address, device type and state.
    UtilGetDeviceInfo,
    /// SAPI 0x05: write configuration item `id` (the `ZCD_NV_*` consts).
    ZbWriteConfiguration { id: u8, value: Vec<u8> },
    /// APP_CNF 0x08: the primary or secondary BDB channel mask.
    AppCnfBdbSetChannel { primary: bool, channels: u32 },
    /// APP_CNF 0x05: start BDB commissioning in `mode` (the `BDB_MODE_*` bits).
    AppCnfBdbStartCommissioning { mode: u8 },
    /// ZDO 0x40: start the stack after `delay_ms`.
    ZdoStartupFromApp { delay_ms: u16 },
    /// AF 0x00: register an application endpoint.
    AfRegister {
        endpoint: u8,
        profile: u16,
        device_id: u16,
        version: u8,
        latency: u8,
        in_clusters: Vec<u16>,
        out_clusters: Vec<u16>,
    },
    /// AF 0x01: send `data` (a ZCL frame) to a device; `AfDataConfirm` follows.
    AfDataRequest {
        dst_addr: u16,
        dst_endpoint: u8,
        src_endpoint: u8,
        cluster: u16,
        trans_id: u8,
        options: u8,
        radius: u8,
        data: Vec<u8>,
    },
    /// ZDO 0x02: ask `dst` for the node descriptor of `nwk_of_interest`.
    ZdoNodeDescReq { dst: u16, nwk_of_interest: u16 },
    /// ZDO 0x04: ask `dst` for the simple descriptor of an endpoint.
    ZdoSimpleDescReq {
        dst: u16,
        nwk_of_interest: u16,
        endpoint: u8,
    },
    /// ZDO 0x05: ask `dst` for the active endpoints.
    ZdoActiveEpReq { dst: u16, nwk_of_interest: u16 },
    /// ZDO 0x21: bind a cluster of a device's endpoint to an endpoint of
    /// `dst_ieee` (destination address mode 3, 64-bit).
    ZdoBindReq {
        dst: u16,
        src_ieee: u64,
        src_endpoint: u8,
        cluster: u16,
        dst_ieee: u64,
        dst_endpoint: u8,
    },
    /// ZDO 0x34: ask `dst` to make `ieee` leave; `remove_children_rejoin`
    /// holds the `LEAVE_*` bits.
    ZdoMgmtLeaveReq {
        dst: u16,
        ieee: u64,
        remove_children_rejoin: u8,
    },
    /// ZDO 0x36: permit joining for `duration` seconds (0 closes, 255 is
    /// forever); `addr_mode` is [`ADDR_MODE_NWK`] or [`ADDR_MODE_BROADCAST`].
    ZdoMgmtPermitJoinReq {
        addr_mode: u8,
        dst: u16,
        duration: u8,
        tc_significance: u8,
    },
}

/// A request whose variable parts do not fit one MT frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{field} holds {len} items, more than {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(transparent)]
    PayloadTooLong(#[from] PayloadTooLong),
}

/// Builds a payload, remembering the first length prefix that overflowed.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    error: Option<EncodeError>,
}

impl Writer {
    fn u8(&mut self, value: u8) -> &mut Self {
        self.out.push(value);
        self
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.out.extend(value.to_le_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.out.extend(value.to_le_bytes());
        self
    }

    fn u64(&mut self, value: u64) -> &mut Self {
        self.out.extend(value.to_le_bytes());
        self
    }

    /// A one-byte count, then the items. A count over 255 is written as 255
    /// with every item, so the payload is over MAX_PAYLOAD and never sent.
    fn count(&mut self, field: &'static str, len: usize) -> &mut Self {
        let count = u8::try_from(len).unwrap_or_else(|_| {
            self.error.get_or_insert(EncodeError::FieldTooLong {
                field,
                len,
                max: usize::from(u8::MAX),
            });
            u8::MAX
        });
        self.u8(count)
    }

    fn short_bytes(&mut self, field: &'static str, bytes: &[u8]) -> &mut Self {
        self.count(field, bytes.len());
        self.out.extend_from_slice(bytes);
        self
    }

    fn clusters(&mut self, field: &'static str, clusters: &[u16]) -> &mut Self {
        self.count(field, clusters.len());
        for &cluster in clusters {
            self.u16(cluster);
        }
        self
    }
}

impl Request {
    /// The command's type: AREQ for [`Request::SysResetReq`], SREQ otherwise.
    pub fn kind(&self) -> CommandType {
        match self {
            Request::SysResetReq { .. } => CommandType::Areq,
            _ => CommandType::Sreq,
        }
    }

    /// The command's subsystem and id.
    pub fn command(&self) -> (Subsystem, u8) {
        match self {
            Request::SysResetReq { .. } => (Subsystem::Sys, 0x00),
            Request::SysPing => (Subsystem::Sys, 0x01),
            Request::SysVersion => (Subsystem::Sys, 0x02),
            Request::SysOsalNvItemInit { .. } => (Subsystem::Sys, 0x07),
            Request::SysOsalNvRead { .. } => (Subsystem::Sys, 0x08),
            Request::SysOsalNvWrite { .. } => (Subsystem::Sys, 0x09),
            Request::UtilGetDeviceInfo => (Subsystem::Util, 0x00),
            Request::ZbWriteConfiguration { .. } => (Subsystem::Sapi, 0x05),
            Request::AppCnfBdbSetChannel { .. } => (Subsystem::AppCnf, 0x08),
            Request::AppCnfBdbStartCommissioning { .. } => (Subsystem::AppCnf, 0x05),
            Request::ZdoStartupFromApp { .. } => (Subsystem::Zdo, 0x40),
            Request::AfRegister { .. } => (Subsystem::Af, 0x00),
            Request::AfDataRequest { .. } => (Subsystem::Af, 0x01),
            Request::ZdoNodeDescReq { .. } => (Subsystem::Zdo, 0x02),
            Request::ZdoSimpleDescReq { .. } => (Subsystem::Zdo, 0x04),
            Request::ZdoActiveEpReq { .. } => (Subsystem::Zdo, 0x05),
            Request::ZdoBindReq { .. } => (Subsystem::Zdo, 0x21),
            Request::ZdoMgmtLeaveReq { .. } => (Subsystem::Zdo, 0x34),
            Request::ZdoMgmtPermitJoinReq { .. } => (Subsystem::Zdo, 0x36),
        }
    }

    fn payload(&self) -> Writer {
        let mut w = Writer::default();
        match self {
            Request::SysResetReq { soft } => {
                w.u8(u8::from(*soft));
            }
            Request::SysPing | Request::SysVersion | Request::UtilGetDeviceInfo => {}
            Request::SysOsalNvItemInit { id, len, init } => {
                w.u16(*id).u16(*len).short_bytes("init", init);
            }
            Request::SysOsalNvRead { id, offset } => {
                w.u16(*id).u8(*offset);
            }
            Request::SysOsalNvWrite { id, offset, value } => {
                w.u16(*id).u8(*offset).short_bytes("value", value);
            }
            Request::ZbWriteConfiguration { id, value } => {
                w.u8(*id).short_bytes("value", value);
            }
            Request::AppCnfBdbSetChannel { primary, channels } => {
                w.u8(u8::from(*primary)).u32(*channels);
            }
            Request::AppCnfBdbStartCommissioning { mode } => {
                w.u8(*mode);
            }
            Request::ZdoStartupFromApp { delay_ms } => {
                w.u16(*delay_ms);
            }
            Request::AfRegister {
                endpoint,
                profile,
                device_id,
                version,
                latency,
                in_clusters,
                out_clusters,
            } => {
                w.u8(*endpoint)
                    .u16(*profile)
                    .u16(*device_id)
                    .u8(*version)
                    .u8(*latency)
                    .clusters("in_clusters", in_clusters)
                    .clusters("out_clusters", out_clusters);
            }
            Request::AfDataRequest {
                dst_addr,
                dst_endpoint,
                src_endpoint,
                cluster,
                trans_id,
                options,
                radius,
                data,
            } => {
                w.u16(*dst_addr)
                    .u8(*dst_endpoint)
                    .u8(*src_endpoint)
                    .u16(*cluster)
                    .u8(*trans_id)
                    .u8(*options)
                    .u8(*radius)
                    .short_bytes("data", data);
            }
            Request::ZdoNodeDescReq {
                dst,
                nwk_of_interest,
            }
            | Request::ZdoActiveEpReq {
                dst,
                nwk_of_interest,
            } => {
                w.u16(*dst).u16(*nwk_of_interest);
            }
            Request::ZdoSimpleDescReq {
                dst,
                nwk_of_interest,
                endpoint,
            } => {
                w.u16(*dst).u16(*nwk_of_interest).u8(*endpoint);
            }
            Request::ZdoBindReq {
                dst,
                src_ieee,
                src_endpoint,
                cluster,
                dst_ieee,
                dst_endpoint,
            } => {
                // Address mode 3: a 64-bit address and an endpoint.
                w.u16(*dst)
                    .u64(*src_ieee)
                    .u8(*src_endpoint)
                    .u16(*cluster)
                    .u8(0x03)
                    .u64(*dst_ieee)
                    .u8(*dst_endpoint);
            }
            Request::ZdoMgmtLeaveReq {
                dst,
                ieee,
                remove_children_rejoin,
            } => {
                w.u16(*dst).u64(*ieee).u8(*remove_children_rejoin);
            }
            Request::ZdoMgmtPermitJoinReq {
                addr_mode,
                dst,
                duration,
                tc_significance,
            } => {
                w.u8(*addr_mode)
                    .u16(*dst)
                    .u8(*duration)
                    .u8(*tc_significance);
            }
        }
        w
    }

    /// The request as an MT frame. A request too large for one frame (see
    /// [`Request::try_frame`]) gives a frame whose payload is over
    /// [`MAX_PAYLOAD`], which [`Frame::encode`] turns into nothing to send.
    pub fn frame(&self) -> Frame {
        let (subsystem, id) = self.command();
        Frame::new(self.kind(), subsystem, id, self.payload().out)
    }

    /// The request as an MT frame, or why it does not fit one.
    pub fn try_frame(&self) -> Result<Frame, EncodeError> {
        let writer = self.payload();
        if let Some(error) = writer.error {
            return Err(error);
        }
        if writer.out.len() > MAX_PAYLOAD {
            return Err(PayloadTooLong {
                len: writer.out.len(),
            }
            .into());
        }
        let (subsystem, id) = self.command();
        Ok(Frame::new(self.kind(), subsystem, id, writer.out))
    }
}

/// The SRSP (subsystem, id) that answers `request`; None for an AREQ
/// ([`Request::SysResetReq`]), which has none. A ZNP that does not know an
/// SREQ answers with the SRSP of subsystem 0, id 0 instead (see
/// [`Incoming::rejected`]).
pub fn srsp_for(request: &Request) -> Option<(u8, u8)> {
    match request.kind() {
        CommandType::Sreq => {
            let (subsystem, id) = request.command();
            Some((subsystem as u8, id))
        }
        _ => None,
    }
}

/// A frame from the ZNP, typed where Kite reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Any SRSP, whole: see [`Incoming::srsp_status`] for its status.
    Srsp {
        subsystem: u8,
        id: u8,
        payload: Vec<u8>,
    },
    /// SYS 0x80: the ZNP (re)started.
    ResetInd {
        reason: u8,
        transport_rev: u8,
        product: u8,
        major: u8,
        minor: u8,
        maint: u8,
    },
    /// ZDO 0xC0: the device state changed
    /// ([`DEVICE_STATE_STARTED_AS_COORDINATOR`] once formed).
    StateChangeInd { state: u8 },
    /// ZDO 0xC1: a device announced itself (joined or rejoined).
    EndDeviceAnnceInd {
        src: u16,
        nwk: u16,
        ieee: u64,
        capabilities: u8,
    },
    /// ZDO 0xCA: the trust centre let a device in.
    TcDevInd { nwk: u16, ieee: u64, parent: u16 },
    /// ZDO 0xC9: a device left (or was asked to).
    LeaveInd {
        nwk: u16,
        ieee: u64,
        request: bool,
        remove: bool,
        rejoin: bool,
    },
    /// ZDO 0xCB: joining is permitted for `duration` seconds (0: closed).
    PermitJoinInd { duration: u8 },
    /// ZDO 0x82. `logical_type` (0 coordinator, 1 router, 2 end device) and
    /// `manufacturer_code` are 0 when a failed response carries no
    /// descriptor.
    NodeDescRsp {
        src: u16,
        status: u8,
        nwk: u16,
        logical_type: u8,
        manufacturer_code: u16,
    },
    /// ZDO 0x84. The descriptor's fields are 0 and empty when a failed
    /// response carries none.
    SimpleDescRsp {
        src: u16,
        status: u8,
        nwk: u16,
        endpoint: u8,
        profile: u16,
        device_id: u16,
        in_clusters: Vec<u16>,
        out_clusters: Vec<u16>,
    },
    /// ZDO 0x85.
    ActiveEpRsp {
        src: u16,
        status: u8,
        nwk: u16,
        endpoints: Vec<u8>,
    },
    /// ZDO 0xA1.
    BindRsp { src: u16, status: u8 },
    /// ZDO 0xB4.
    MgmtLeaveRsp { src: u16, status: u8 },
    /// ZDO 0xB6.
    MgmtPermitJoinRsp { src: u16, status: u8 },
    /// AF 0x80: what became of an `AfDataRequest` (its `trans_id`).
    AfDataConfirm {
        status: u8,
        endpoint: u8,
        trans_id: u8,
    },
    /// AF 0x81: a message from a device; `data` is its ZCL frame.
    AfIncomingMsg {
        group: u16,
        cluster: u16,
        src_addr: u16,
        src_endpoint: u8,
        dst_endpoint: u8,
        broadcast: bool,
        lqi: u8,
        security: bool,
        timestamp: u32,
        trans_seq: u8,
        data: Vec<u8>,
    },
    /// APP_CNF 0x80: progress of BDB commissioning.
    BdbCommissioningNotification {
        status: u8,
        mode: u8,
        remaining_modes: u8,
    },
    /// Any other frame, kept whole.
    Other(Frame),
}

/// The SRSPs whose first payload byte is a status: every SREQ Kite sends
/// except SYS_PING (capabilities), SYS_VERSION (versions) and
/// ZDO_STARTUP_FROM_APP (a startup state).
const SRSPS_WITH_STATUS: &[(Subsystem, u8)] = &[
    (Subsystem::Sys, 0x07),
    (Subsystem::Sys, 0x08),
    (Subsystem::Sys, 0x09),
    (Subsystem::Util, 0x00),
    (Subsystem::Sapi, 0x05),
    (Subsystem::AppCnf, 0x05),
    (Subsystem::AppCnf, 0x08),
    (Subsystem::Af, 0x00),
    (Subsystem::Af, 0x01),
    (Subsystem::Zdo, 0x02),
    (Subsystem::Zdo, 0x04),
    (Subsystem::Zdo, 0x05),
    (Subsystem::Zdo, 0x21),
    (Subsystem::Zdo, 0x34),
    (Subsystem::Zdo, 0x36),
];

/// An SREQ the ZNP refused: the "command not recognised" SRSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// 1 invalid subsystem, 2 invalid command id, 3 invalid parameter,
    /// 4 invalid length.
    pub code: u8,
    /// The refused request's subsystem and id.
    pub subsystem: u8,
    pub id: u8,
}

impl Incoming {
    /// The status of an SRSP to one of Kite's requests whose response
    /// starts with one (0 is success); None for other frames, for SRSPs
    /// without a status, and for an empty payload.
    pub fn srsp_status(&self) -> Option<u8> {
        let Incoming::Srsp {
            subsystem,
            id,
            payload,
        } = self
        else {
            return None;
        };
        SRSPS_WITH_STATUS
            .iter()
            .any(|&(s, i)| s as u8 == *subsystem && i == *id)
            .then(|| payload.first().copied())
            .flatten()
    }

    /// The ZNP's "command not recognised" SRSP (subsystem 0, id 0), which
    /// comes instead of the expected SRSP when it refuses an SREQ.
    pub fn rejected(&self) -> Option<Rejected> {
        match self {
            Incoming::Srsp {
                subsystem: 0,
                id: 0,
                payload,
            } => match payload.as_slice() {
                [code, cmd0, cmd1] => Some(Rejected {
                    code: *code,
                    subsystem: cmd0 & 0x1F,
                    id: *cmd1,
                }),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A known command whose payload does not hold its fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("{command}: {len}-byte payload too short")]
    Short { command: &'static str, len: usize },
    #[error("{command}: {extra} bytes after the last field")]
    Trailing { command: &'static str, extra: usize },
    #[error("{command}: {detail}")]
    Inconsistent {
        command: &'static str,
        detail: &'static str,
    },
}

/// Reads a payload's fields in order.
struct Reader<'a> {
    command: &'static str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(command: &'static str, bytes: &'a [u8]) -> Self {
        Reader {
            command,
            bytes,
            at: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let bytes = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(ParseError::Short {
                command: self.command,
                len: self.bytes.len(),
            })?;
        self.at += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Result<bool, ParseError> {
        Ok(self.u8()? != 0)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        self.array().map(u64::from_le_bytes)
    }

    fn short_bytes(&mut self) -> Result<Vec<u8>, ParseError> {
        let len = self.u8()?;
        Ok(self.take(usize::from(len))?.to_vec())
    }

    fn clusters(&mut self) -> Result<Vec<u16>, ParseError> {
        let count = self.u8()?;
        (0..count).map(|_| self.u16()).collect()
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn inconsistent(&self, detail: &'static str) -> ParseError {
        ParseError::Inconsistent {
            command: self.command,
            detail,
        }
    }

    /// Every byte must have been read: extra bytes mean a different layout.
    fn end(self) -> Result<(), ParseError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(ParseError::Trailing {
                command: self.command,
                extra,
            }),
        }
    }
}

/// The node descriptor's length (ZDO spec 2.3.2.3).
const NODE_DESCRIPTOR_LEN: usize = 13;

/// What SYS_VERSION's SRSP says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub transport_rev: u8,
    pub product: u8,
    pub major: u8,
    pub minor: u8,
    pub maint: u8,
    /// The firmware's build, e.g. 20210708; older firmware omits it.
    pub revision: Option<u32>,
}

/// Reads SYS_VERSION's SRSP payload: five version bytes, then optionally
/// the code revision (u32), the bootloader build type (u8) and the
/// bootloader revision (u32), in that order.
pub fn parse_version(payload: &[u8]) -> Result<Version, ParseError> {
    let mut r = Reader::new("SYS_VERSION", payload);
    let mut version = Version {
        transport_rev: r.u8()?,
        product: r.u8()?,
        major: r.u8()?,
        minor: r.u8()?,
        maint: r.u8()?,
        revision: None,
    };
    if r.remaining() > 0 {
        version.revision = Some(r.u32()?);
    }
    match r.remaining() {
        0 | 1 | 5 => Ok(version),
        extra => Err(ParseError::Trailing {
            command: r.command,
            extra,
        }),
    }
}

/// What UTIL_GET_DEVICE_INFO's SRSP says about the ZNP itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub status: u8,
    pub ieee: u64,
    pub nwk: u16,
    /// Bits 0..2: the device types the firmware can be (coordinator,
    /// router, end device).
    pub device_type: u8,
    /// The device state, as in `StateChangeInd`.
    pub state: u8,
    /// Short addresses of the end devices associated with it.
    pub associated: Vec<u16>,
}

/// Reads UTIL_GET_DEVICE_INFO's SRSP payload.
pub fn parse_device_info(payload: &[u8]) -> Result<DeviceInfo, ParseError> {
    let mut r = Reader::new("UTIL_GET_DEVICE_INFO", payload);
    let info = DeviceInfo {
        status: r.u8()?,
        ieee: r.u64()?,
        nwk: r.u16()?,
        device_type: r.u8()?,
        state: r.u8()?,
        associated: r.clusters()?,
    };
    r.end()?;
    Ok(info)
}

/// Reads SYS_OSAL_NV_READ's SRSP payload: the status and the value read.
pub fn parse_nv_read(payload: &[u8]) -> Result<(u8, Vec<u8>), ParseError> {
    let mut r = Reader::new("SYS_OSAL_NV_READ", payload);
    let read = (r.u8()?, r.short_bytes()?);
    r.end()?;
    Ok(read)
}

/// Types a frame from the ZNP. SRSPs are [`Incoming::Srsp`]; AREQs Kite
/// reads are typed; anything else is [`Incoming::Other`]. A known command
/// with a short or inconsistent payload is an error.
pub fn parse(frame: &Frame) -> Result<Incoming, ParseError> {
    match frame.kind {
        CommandType::Srsp => {
            return Ok(Incoming::Srsp {
                subsystem: frame.subsystem,
                id: frame.id,
                payload: frame.payload.clone(),
            })
        }
        CommandType::Areq => {}
        CommandType::Poll | CommandType::Sreq => return Ok(Incoming::Other(frame.clone())),
    }
    let Some(subsystem) = Subsystem::from_u8(frame.subsystem) else {
        return Ok(Incoming::Other(frame.clone()));
    };
    let payload = frame.payload.as_slice();
    let incoming = match (subsystem, frame.id) {
        (Subsystem::Sys, 0x80) => {
            let mut r = Reader::new("SYS_RESET_IND", payload);
            let incoming = Incoming::ResetInd {
                reason: r.u8()?,
                transport_rev: r.u8()?,
                product: r.u8()?,
                major: r.u8()?,
                minor: r.u8()?,
                maint: r.u8()?,
            };
            r.end()?;
            incoming
        }
        (Subsystem::Zdo, 0xC0) => {
            let mut r = Reader::new("ZDO_STATE_CHANGE_IND", payload);
            let incoming = Incoming::StateChangeInd { state: r.u8()? };
            r.end()?;
            incoming
        }
        (Subsystem::Zdo, 0xC1) => {
            let mut r = Reader::new("ZDO_END_DEVICE_ANNCE_IND", payload);
            let incoming = Incoming::EndDeviceAnnceInd {
                src: r.u16()?,
                nwk: r.u16()?,
                ieee: r.u64()?,
                capabilities: r.u8()?,
            };
            r.end()?;
            incoming
        }
        (Subsystem::Zdo, 0xCA) => {
            let mut r = Reader::new("ZDO_TC_DEV_IND", payload);
            let incoming = Incoming::TcDevInd {
                nwk: r.u16()?,
                ieee: r.u64()?,
                parent: r.u16()?,
            };
            r.end()?;
            incoming
        }
        (Subsystem::Zdo, 0xC9) => {
            let mut r = Reader::new("ZDO_LEAVE_IND", payload);
            let incoming = Incoming::LeaveInd {
                nwk: r.u16()?,
                ieee: r.u64()?,
                request: r.bool()?,
                remove: r.bool()?,
                rejoin: r.bool()?,
            };
            r.end()?;
            incoming
        }
        (Subsystem::Zdo, 0xCB) => {
            let mut r = Reader::new("ZDO_PERMIT_JOIN_IND", payload);
            let incoming = Incoming::PermitJoinInd { duration: r.u8()? };
            r.end()?;
            incoming
        }
        (Subsystem::Zdo, 0x82) => parse_node_desc_rsp(payload)?,
        (Subsystem::Zdo, 0x84) => parse_simple_desc_rsp(payload)?,
        (Subsystem::Zdo, 0x85) => {
            let mut r = Reader::new("ZDO_ACTIVE_EP_RSP", payload);
            let src = r.u16()?;
            let status = r.u8()?;
            let nwk = r.u16()?;
            let endpoints = r.short_bytes()?;
            r.end()?;
            Incoming::ActiveEpRsp {
                src,
                status,
                nwk,
                endpoints,
            }
        }
        (Subsystem::Zdo, id @ (0xA1 | 0xB4 | 0xB6)) => {
            let command = match id {
                0xA1 => "ZDO_BIND_RSP",
                0xB4 => "ZDO_MGMT_LEAVE_RSP",
                _ => "ZDO_MGMT_PERMIT_JOIN_RSP",
            };
            let mut r = Reader::new(command, payload);
            let (src, status) = (r.u16()?, r.u8()?);
            r.end()?;
            match id {
                0xA1 => Incoming::BindRsp { src, status },
                0xB4 => Incoming::MgmtLeaveRsp { src, status },
                _ => Incoming::MgmtPermitJoinRsp { src, status },
            }
        }
        (Subsystem::Af, 0x80) => {
            let mut r = Reader::new("AF_DATA_CONFIRM", payload);
            let incoming = Incoming::AfDataConfirm {
                status: r.u8()?,
                endpoint: r.u8()?,
                trans_id: r.u8()?,
            };
            r.end()?;
            incoming
        }
        (Subsystem::Af, 0x81) => parse_af_incoming_msg(payload)?,
        (Subsystem::AppCnf, 0x80) => {
            let mut r = Reader::new("APP_CNF_BDB_COMMISSIONING_NOTIFICATION", payload);
            let incoming = Incoming::BdbCommissioningNotification {
                status: r.u8()?,
                mode: r.u8()?,
                remaining_modes: r.u8()?,
            };
            r.end()?;
            incoming
        }
        _ => Incoming::Other(frame.clone()),
    };
    Ok(incoming)
}

fn parse_node_desc_rsp(payload: &[u8]) -> Result<Incoming, ParseError> {
    let mut r = Reader::new("ZDO_NODE_DESC_RSP", payload);
    let src = r.u16()?;
    let status = r.u8()?;
    let nwk = r.u16()?;
    let rest = r.take(r.remaining())?;
    // A failed response may carry no descriptor, or a lone 0 byte.
    let (logical_type, manufacturer_code) = match rest {
        [] | [0] if status != 0 => (0, 0),
        [] | [0] => return Err(r.inconsistent("success without a node descriptor")),
        _ if rest.len() < NODE_DESCRIPTOR_LEN => {
            return Err(ParseError::Short {
                command: r.command,
                len: payload.len(),
            })
        }
        _ if rest.len() > NODE_DESCRIPTOR_LEN => {
            return Err(ParseError::Trailing {
                command: r.command,
                extra: rest.len() - NODE_DESCRIPTOR_LEN,
            })
        }
        // Logical type in bits 0..2 of the first byte; the manufacturer
        // code after the flags, frequency band and MAC capabilities.
        _ => (rest[0] & 0x07, u16::from_le_bytes([rest[3], rest[4]])),
    };
    Ok(Incoming::NodeDescRsp {
        src,
        status,
        nwk,
        logical_type,
        manufacturer_code,
    })
}

fn parse_simple_desc_rsp(payload: &[u8]) -> Result<Incoming, ParseError> {
    let mut r = Reader::new("ZDO_SIMPLE_DESC_RSP", payload);
    let src = r.u16()?;
    let status = r.u8()?;
    let nwk = r.u16()?;
    let len = usize::from(r.u8()?);
    if len == 0 {
        if status == 0 {
            return Err(r.inconsistent("success without a simple descriptor"));
        }
        r.end()?;
        return Ok(Incoming::SimpleDescRsp {
            src,
            status,
            nwk,
            endpoint: 0,
            profile: 0,
            device_id: 0,
            in_clusters: Vec::new(),
            out_clusters: Vec::new(),
        });
    }
    let start = r.at;
    let endpoint = r.u8()?;
    let profile = r.u16()?;
    let device_id = r.u16()?;
    let _version = r.u8()?;
    let in_clusters = r.clusters()?;
    let out_clusters = r.clusters()?;
    // The length prefix must cover exactly the descriptor.
    if r.at - start != len {
        return Err(r.inconsistent("descriptor length does not match its contents"));
    }
    r.end()?;
    Ok(Incoming::SimpleDescRsp {
        src,
        status,
        nwk,
        endpoint,
        profile,
        device_id,
        in_clusters,
        out_clusters,
    })
}

fn parse_af_incoming_msg(payload: &[u8]) -> Result<Incoming, ParseError> {
    let mut r = Reader::new("AF_INCOMING_MSG", payload);
    let incoming = Incoming::AfIncomingMsg {
        group: r.u16()?,
        cluster: r.u16()?,
        src_addr: r.u16()?,
        src_endpoint: r.u8()?,
        dst_endpoint: r.u8()?,
        broadcast: r.bool()?,
        lqi: r.u8()?,
        security: r.bool()?,
        timestamp: r.u32()?,
        trans_seq: r.u8()?,
        data: r.short_bytes()?,
    };
    // Z-Stack appends the MAC source address (u16) and the message's
    // radius (u8), undocumented; older firmware does not.
    match r.remaining() {
        0 | 3 => Ok(incoming),
        extra => Err(ParseError::Trailing {
            command: r.command,
            extra,
        }),
    }
}

/// `0x00124b0012345678`: an IEEE address as Zigbee tools show it, most
/// significant byte first, lower-case.
pub fn ieee_to_string(ieee: u64) -> String {
    format!("0x{ieee:016x}")
}

/// An IEEE address from `0x00124b0012345678` (16 hex digits, `0x` optional)
/// or `00:12:4b:00:12:34:56:78`, any case; None for anything else.
pub fn ieee_from_str(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits: String = if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 8 || parts.iter().any(|part| part.len() != 2) {
            return None;
        }
        parts.concat()
    } else {
        text.strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text)
            .to_string()
    };
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mt::{Deframed, Deframer};

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn wire(request: &Request) -> Vec<u8> {
        request.frame().encode()
    }

    fn deframe(bytes: &[u8]) -> Frame {
        let mut out = Vec::new();
        Deframer::new().push(bytes, &mut out);
        match out.as_slice() {
            [Deframed::Frame(frame)] => frame.clone(),
            other => panic!("expected one frame, got {other:?}"),
        }
    }

    const IEEE: u64 = 0x0012_4b00_1234_5678;

    #[test]
    fn requests_on_the_wire() {
        // Examples worked from the Z-Stack MT API spec's layouts.
        assert_eq!(wire(&Request::SysPing), hex("fe 00 21 01 20"));
        assert_eq!(wire(&Request::SysVersion), hex("fe 00 21 02 23"));
        assert_eq!(
            wire(&Request::SysResetReq { soft: false }),
            hex("fe 01 41 00 00 40")
        );
        assert_eq!(
            wire(&Request::SysOsalNvRead {
                id: NV_HAS_CONFIGURED_ZSTACK3,
                offset: 0
            }),
            hex("fe 03 21 08 60 00 00 4a")
        );
        assert_eq!(
            wire(&Request::ZdoMgmtPermitJoinReq {
                addr_mode: ADDR_MODE_BROADCAST,
                dst: 0xfffc,
                duration: 60,
                tc_significance: 0
            }),
            hex("fe 05 25 36 0f fc ff 3c 00 26")
        );
        // The IEEE address least significant byte first.
        let bind = Request::ZdoBindReq {
            dst: 0x1234,
            src_ieee: IEEE,
            src_endpoint: 1,
            cluster: 0x0402,
            dst_ieee: 0x00_12_4b_00_0a_0b_0c_0d,
            dst_endpoint: 1,
        }
        .frame();
        assert_eq!(
            bind.payload,
            hex("3412 7856341200 4b1200 01 0204 03 0d0c0b0a004b1200 01")
        );
        let data = Request::AfDataRequest {
            dst_addr: 0x5678,
            dst_endpoint: 1,
            src_endpoint: 1,
            cluster: 0x0006,
            trans_id: 7,
            options: 0,
            radius: 30,
            data: vec![0x01, 0x07, 0x01],
        }
        .frame();
        assert_eq!(data.payload, hex("7856 01 01 0600 07 00 1e 03 010701"));
        let write = Request::ZbWriteConfiguration {
            id: ZCD_NV_ZDO_DIRECT_CB,
            value: vec![1],
        }
        .frame();
        // Config id, length, value: Z-Stack's MT_SapiWriteCfg reads exactly that.
        assert_eq!(write.payload, hex("8f 01 01"));
        let register = Request::AfRegister {
            endpoint: 1,
            profile: 0x0104,
            device_id: 0x0005,
            version: 0,
            latency: 0,
            in_clusters: vec![0x0000, 0x0006],
            out_clusters: vec![0x0500],
        }
        .frame();
        assert_eq!(
            register.payload,
            hex("01 0401 0500 00 00 02 0000 0600 01 0005")
        );
    }

    #[test]
    fn srsps_answer_their_sreqs() {
        assert_eq!(srsp_for(&Request::SysPing), Some((1, 0x01)));
        assert_eq!(srsp_for(&Request::SysResetReq { soft: true }), None);
        assert_eq!(
            srsp_for(&Request::ZdoActiveEpReq {
                dst: 1,
                nwk_of_interest: 1
            }),
            Some((5, 0x05))
        );
        let rsp = parse(&deframe(&hex("fe 01 65 05 00 61"))).unwrap();
        assert_eq!(
            rsp,
            Incoming::Srsp {
                subsystem: 5,
                id: 5,
                payload: vec![0]
            }
        );
        assert_eq!(rsp.srsp_status(), Some(0));
        // SYS_PING's SRSP is capabilities, not a status.
        let ping = parse(&deframe(&hex("fe 02 61 01 59 06 3d"))).unwrap();
        assert_eq!(ping.srsp_status(), None);
        assert_eq!(ping.rejected(), None);
        // An unknown SREQ (cmd0 0x21, id 0x99) refused: invalid command id.
        let rejected = Incoming::Srsp {
            subsystem: 0,
            id: 0,
            payload: vec![2, 0x21, 0x99],
        };
        assert_eq!(
            rejected.rejected(),
            Some(Rejected {
                code: 2,
                subsystem: 1,
                id: 0x99
            })
        );
    }

    #[test]
    fn srsp_payloads_kite_reads() {
        assert_eq!(
            parse_version(&hex("02 01 02 07 01")),
            Ok(Version {
                transport_rev: 2,
                product: 1,
                major: 2,
                minor: 7,
                maint: 1,
                revision: None
            })
        );
        let version = parse_version(&hex("02 01 02 07 01 7c773401 00 ffffffff")).unwrap();
        assert_eq!(version.revision, Some(20_215_676));
        assert_eq!(
            parse_version(&hex("02 01 02 07 01 7c773401 00")).unwrap(),
            version
        );
        assert!(parse_version(&hex("02 01 02 07 01 7c77")).is_err());
        assert!(parse_version(&hex("02 01 02 07 01 7c773401 00 ffffffff 00")).is_err());
        assert_eq!(
            parse_device_info(&hex("00 7856341200 4b1200 0000 07 09 02 3412 7856")),
            Ok(DeviceInfo {
                status: 0,
                ieee: IEEE,
                nwk: 0,
                device_type: 7,
                state: 9,
                associated: vec![0x1234, 0x5678]
            })
        );
        assert!(parse_device_info(&hex("00 7856341200 4b1200 0000 07 09 02 3412")).is_err());
        assert_eq!(parse_nv_read(&hex("00 01 55")), Ok((0, vec![0x55])));
        assert_eq!(parse_nv_read(&hex("0a 00")), Ok((0x0a, vec![])));
        assert!(parse_nv_read(&hex("00 02 55")).is_err());
    }

    #[test]
    fn indications_are_typed() {
        // SYS_RESET_IND after a power up: Z-Stack 3.x.0 on a CC2652.
        let frame = Frame::new(
            CommandType::Areq,
            Subsystem::Sys,
            0x80,
            hex("00 02 01 02 07 01"),
        );
        assert_eq!(
            parse(&frame).unwrap(),
            Incoming::ResetInd {
                reason: 0,
                transport_rev: 2,
                product: 1,
                major: 2,
                minor: 7,
                maint: 1
            }
        );
        let annce = Frame::new(
            CommandType::Areq,
            Subsystem::Zdo,
            0xC1,
            hex("3412 3412 7856341200 4b1200 8e"),
        );
        assert_eq!(
            parse(&annce).unwrap(),
            Incoming::EndDeviceAnnceInd {
                src: 0x1234,
                nwk: 0x1234,
                ieee: IEEE,
                capabilities: 0x8e
            }
        );
        let msg = Frame::new(
            CommandType::Areq,
            Subsystem::Af,
            0x81,
            hex("0000 0204 3412 01 01 00 a2 00 78563412 05 08 1805 0a 0000 29 d007 3412 1d"),
        );
        let expected = Incoming::AfIncomingMsg {
            group: 0,
            cluster: 0x0402,
            src_addr: 0x1234,
            src_endpoint: 1,
            dst_endpoint: 1,
            broadcast: false,
            lqi: 0xa2,
            security: false,
            timestamp: 0x1234_5678,
            trans_seq: 5,
            data: hex("1805 0a 0000 29 d007"),
        };
        assert_eq!(parse(&msg).unwrap(), expected);
        // Without the trailing MAC source and radius, too.
        let mut short = msg.clone();
        short.payload.truncate(short.payload.len() - 3);
        assert_eq!(parse(&short).unwrap(), expected);
    }

    #[test]
    fn descriptors_with_and_without_success() {
        let simple = Frame::new(
            CommandType::Areq,
            Subsystem::Zdo,
            0x84,
            hex("3412 00 3412 10 01 0401 0201 01 03 0000 0300 0204 01 1900"),
        );
        assert_eq!(
            parse(&simple).unwrap(),
            Incoming::SimpleDescRsp {
                src: 0x1234,
                status: 0,
                nwk: 0x1234,
                endpoint: 1,
                profile: 0x0104,
                device_id: 0x0102,
                in_clusters: vec![0x0000, 0x0003, 0x0402],
                out_clusters: vec![0x0019]
            }
        );
        let mut wrong = simple.clone();
        wrong.payload[5] = 0x0f;
        assert!(matches!(
            parse(&wrong),
            Err(ParseError::Inconsistent { .. })
        ));
        let failed = Frame::new(
            CommandType::Areq,
            Subsystem::Zdo,
            0x84,
            hex("3412 83 3412 00"),
        );
        assert!(matches!(
            parse(&failed).unwrap(),
            Incoming::SimpleDescRsp {
                status: 0x83,
                endpoint: 0,
                ..
            }
        ));
        let node = Frame::new(
            CommandType::Areq,
            Subsystem::Zdo,
            0x82,
            hex("3412 00 3412 02 40 80 5f11 52 5200 002c 5200 00"),
        );
        assert_eq!(
            parse(&node).unwrap(),
            Incoming::NodeDescRsp {
                src: 0x1234,
                status: 0,
                nwk: 0x1234,
                logical_type: 2,
                manufacturer_code: 0x115f
            }
        );
        let failed = Frame::new(CommandType::Areq, Subsystem::Zdo, 0x82, hex("3412 80 3412"));
        assert!(matches!(
            parse(&failed).unwrap(),
            Incoming::NodeDescRsp { status: 0x80, .. }
        ));
        let missing = Frame::new(CommandType::Areq, Subsystem::Zdo, 0x82, hex("3412 00 3412"));
        assert!(matches!(
            parse(&missing),
            Err(ParseError::Inconsistent { .. })
        ));
    }

    #[test]
    fn short_and_long_payloads_are_errors() {
        let short = Frame::new(CommandType::Areq, Subsystem::Zdo, 0xC1, hex("3412 3412"));
        assert_eq!(
            parse(&short),
            Err(ParseError::Short {
                command: "ZDO_END_DEVICE_ANNCE_IND",
                len: 4
            })
        );
        let long = Frame::new(CommandType::Areq, Subsystem::Zdo, 0xC0, hex("09 00"));
        assert_eq!(
            parse(&long),
            Err(ParseError::Trailing {
                command: "ZDO_STATE_CHANGE_IND",
                extra: 1
            })
        );
        // AF_INCOMING_MSG whose data length runs past the payload.
        let msg = Frame::new(
            CommandType::Areq,
            Subsystem::Af,
            0x81,
            hex("0000 0204 3412 01 01 00 a2 00 78563412 05 09 1805 0a 0000 29 d007"),
        );
        assert!(matches!(parse(&msg), Err(ParseError::Short { .. })));
        // Unknown AREQs and unnamed subsystems pass through.
        let other = Frame::new(CommandType::Areq, Subsystem::Zdo, 0xFF, vec![1, 2]);
        assert_eq!(parse(&other).unwrap(), Incoming::Other(other.clone()));
    }

    #[test]
    fn oversize_requests_are_refused() {
        let request = Request::AfDataRequest {
            dst_addr: 1,
            dst_endpoint: 1,
            src_endpoint: 1,
            cluster: 6,
            trans_id: 1,
            options: 0,
            radius: 30,
            data: vec![0; 241],
        };
        assert_eq!(
            request.try_frame(),
            Err(EncodeError::PayloadTooLong(PayloadTooLong { len: 251 }))
        );
        assert!(request.frame().encode().is_empty());
        let request = Request::SysOsalNvWrite {
            id: 1,
            offset: 0,
            value: vec![0; 300],
        };
        assert_eq!(
            request.try_frame(),
            Err(EncodeError::FieldTooLong {
                field: "value",
                len: 300,
                max: 255
            })
        );
        assert!(request.frame().encode().is_empty());
        let fits = Request::AfDataRequest {
            dst_addr: 1,
            dst_endpoint: 1,
            src_endpoint: 1,
            cluster: 6,
            trans_id: 1,
            options: 0,
            radius: 30,
            data: vec![0; 240],
        };
        assert_eq!(fits.try_frame().unwrap(), fits.frame());
    }

    #[test]
    fn ieee_addresses_read_most_significant_first() {
        assert_eq!(ieee_to_string(IEEE), "0x00124b0012345678");
        assert_eq!(ieee_from_str("0x00124b0012345678"), Some(IEEE));
        assert_eq!(ieee_from_str("00124B0012345678"), Some(IEEE));
        assert_eq!(ieee_from_str("00:12:4b:00:12:34:56:78"), Some(IEEE));
        for bad in [
            "",
            "0x",
            "0x00124b001234567",
            "0x00124b00123456789",
            "0x00124b001234567g",
            "00:12:4b:00:12:34:5678",
            "+0124b0012345678",
        ] {
            assert_eq!(ieee_from_str(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(
            kind in 0u8..4,
            subsystem in prop_oneof![Just(1u8), Just(4), Just(5), Just(15), 0u8..32],
            id in prop_oneof![
                Just(0x80u8), Just(0x81), Just(0x82), Just(0x84), Just(0x85), Just(0xA1),
                Just(0xB4), Just(0xB6), Just(0xC0), Just(0xC1), Just(0xC9), Just(0xCA),
                Just(0xCB), any::<u8>()
            ],
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let frame = Frame {
                kind: CommandType::from_u8(kind).unwrap(),
                subsystem,
                id,
                payload,
            };
            let _ = parse_version(&frame.payload);
            let _ = parse_device_info(&frame.payload);
            let _ = parse_nv_read(&frame.payload);
            if let Ok(incoming) = parse(&frame) {
                let _ = incoming.srsp_status();
                let _ = incoming.rejected();
            }
        }

        #[test]
        fn ieee_round_trips(ieee in any::<u64>()) {
            prop_assert_eq!(ieee_from_str(&ieee_to_string(ieee)), Some(ieee));
        }
    }
}
