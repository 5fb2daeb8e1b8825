//! A simulated Texas Instruments Z-Stack 3.x.0 coordinator stick (CC2652,
//! ZNP firmware) behind a socat serial pair, so Kite's Zigbee driver can be
//! tested end to end without a radio. `tests/support/znp_stick.py` speaks
//! the MT serial protocol (115200 8N1, no flow control; a pty has no baud
//! timing) and builds and parses every frame with zigpy-znp 1.1.1 and ZCL
//! payloads with zigpy, in the `.venv-zigbee` venv (GPL-3.0 test tooling:
//! run by the tests, never linked into Kite). Every frame in and out is
//! logged to `dir/znp-stick.log`.
//!
//! NV memory lives in `dir/znp-nv.json` (the stick's IEEE address, the OSAL
//! NV items, the formed network and the joined devices), so [`ZnpStick::restart`]
//! gives back the stick with its network, like a re-plugged one.
//!
//! What it answers, as Z-Stack 3.x.0 does (delays shortened):
//! - `SYS_RESET_REQ` (AREQ): one stray `0x00` byte at once (the UART glitches
//!   while the chip resets), then ~50 ms later `SYS_RESET_IND` (reason 0
//!   power-up, as a CC2652 reports even a soft reset; transport 2, product 1,
//!   2.7.1). Until then the stick is deaf: requests are lost. Every reboot
//!   forgets runtime state (device state HOLD, AF endpoints, permit join, BDB
//!   channel masks) and applies `STARTUP_OPTION`: bit 1 (clear state) leaves
//!   the network and forgets its devices, bit 0 (clear config) puts the
//!   configuration items (PANID, EXTENDED_PAN_ID, CHANLIST, PRECFGKEY,
//!   PRECFGKEYS_ENABLE, LOGICAL_TYPE, ZDO_DIRECT_CB, ...) back to their
//!   defaults; items the host made (0x0060 HAS_CONFIGURED_ZSTACK3) stay;
//!   the option is then cleared.
//! - `SYS_PING` → capabilities 0x0FFF; `SYS_VERSION` → 2, 1, 2, 7, 1,
//!   revision 20230507, bootloader type 0, bootloader revision 0xFFFFFFFF.
//! - OSAL NV: `SYS_OSAL_NV_READ`(/`_EXT`) of a missing item → status 0x0A
//!   (NV_OPER_FAILED), empty; `_ITEM_INIT` → 0x09 (NV_ITEM_UNINIT) when it
//!   creates the item, 0 when it exists; `_WRITE` → 0, 0x09 for a missing item,
//!   0x0A past its end (`_WRITE` ignores its offset, `_WRITE_EXT` honours it);
//!   `_LENGTH`, `_DELETE` too. `ZB_WRITE_CONFIGURATION` (SAPI 0x05: id, len,
//!   value) writes the item (0 or 1 FAILURE), `ZB_READ_CONFIGURATION` reads it.
//! - `UTIL_GET_DEVICE_INFO` → 0, IEEE, NWK 0x0000 once a network exists
//!   (0xFFFE before), device types 0x07, state (0 HOLD, 8, 9), no associated
//!   devices.
//! - `APP_CNF_BDB_SET_CHANNEL` → 0. `APP_CNF_BDB_START_COMMISSIONING` with mode
//!   0x04 → 0, then as a CC2652 does: `BDB_COMMISSIONING_NOTIFICATION`
//!   [0x01 in progress, 0x02, 0x04], `ZDO_STATE_CHANGE_IND` 8,
//!   `ZDO_STATE_CHANGE_IND` 9 and `BDB_COMMISSIONING_NOTIFICATION` [0x00
//!   success, 0x02, 0x00] ~100 ms later. (The mode byte is Z-Stack's
//!   bdbCommissioningMode enum, 2 = formation; the remaining modes a bitmask,
//!   0x04 = formation. zigpy-znp decodes the mode as the bitmask, "NwkSteering".)
//!   The network is formed on the lowest channel of the primary mask (default:
//!   CHANLIST), with PANID (random if 0xFFFF), EXTENDED_PAN_ID (the IEEE
//!   address if zero) and PRECFGKEY only if PRECFGKEYS_ENABLE is 1 (otherwise
//!   a random key); joins stay closed. Already formed: 0, state 9 if not yet,
//!   then notifications [0x0D restored, 0x00, 0x04] and [0x08 formation
//!   failure, 0x02, 0x00]. Not a coordinator (LOGICAL_TYPE != 0) or no channel:
//!   [0x08, 0x02, 0x00] only.
//! - `ZDO_STARTUP_FROM_APP` → 0 (restored) and `ZDO_STATE_CHANGE_IND` 9 after
//!   the start delay (at least 50 ms; none if already started); never formed:
//!   1 (new network) and the state stays HOLD.
//! - `AF_REGISTER` → 0, 0xB8 (APS_DUPLICATE_ENTRY) for an endpoint already
//!   registered since the last reboot; `AF_DELETE`.
//! - `ZDO_MGMT_PERMIT_JOIN_REQ` to 0x0000 or a broadcast → 0 (1 when the
//!   network is not started), then `ZDO_MGMT_PERMIT_JOIN_RSP` (src 0, status
//!   0) and `ZDO_PERMIT_JOIN_IND` (duration; 0xFF is 254 s as in Zigbee R21);
//!   `ZDO_PERMIT_JOIN_IND` 0 again when it times out.
//! - Interview: `ZDO_NODE_DESC_REQ`, `ZDO_ACTIVE_EP_REQ`, `ZDO_SIMPLE_DESC_REQ`
//!   (0x82 INVALID_EP and a zero-length descriptor for another endpoint),
//!   `ZDO_BIND_REQ`/`UNBIND_REQ` (0x88 NO_ENTRY for a missing binding),
//!   `ZDO_IEEE_ADDR_REQ`/`NWK_ADDR_REQ` → SRSP 0 then the `_RSP` callback ~40 ms
//!   later; for 0x0000, the coordinator's own. Devices with On/Off or Level
//!   Control are routers (MAC capabilities 0x8E), others end devices (0x80);
//!   manufacturer codes from the name (IKEA 0x117C, Philips/Signify 0x100B,
//!   LUMI 0x115F, ...; else 0x1234). Nothing answers for an absent address.
//! - `AF_DATA_REQUEST`(/`_EXT`) → 0 (0x02 if its source endpoint is not
//!   registered), `AF_DATA_CONFIRM` (0, source endpoint, trans id) ~20 ms
//!   later (0xCD NWK_NO_ROUTE after 0.5 s for an absent device), and the
//!   device's answer as `AF_INCOMING_MSG` ~40 ms later (ZCL frame control 0x18,
//!   the request's TSN; LQI 120 or the last reported one; group 0, not
//!   broadcast, not secured, trans seq 0). Devices answer Read Attributes
//!   (0x86 for unknown attributes), Write Attributes, Configure Reporting
//!   (one SUCCESS record, or UNSUPPORTED_ATTRIBUTE records), On/Off
//!   off/on/toggle (and 0x40-0x42), Level Control 0x00-0x07, IAS Zone enroll
//!   response; a Default Response unless the request disabled it, errors
//!   (0x81, 0x82, 0xC3) always; a changed OnOff/CurrentLevel is reported
//!   ~60 ms later (Report Attributes), as bulbs do. Writing IAS_CIE_Address
//!   makes an IAS device send Zone Enroll Request. Messages to an endpoint the
//!   host has not registered, or while the network is not started, are
//!   dropped, as Z-Stack drops them.
//! - `ZDO_MGMT_LEAVE_REQ` → 0, `ZDO_MGMT_LEAVE_RSP` (0) and `ZDO_LEAVE_IND`;
//!   the device is gone.
//! - `UTIL_LED_CONTROL`: no SRSP at all (a Z-Stack 3.x.0 quirk).
//! - Anything else, or a request zigpy-znp cannot parse: the SRSP
//!   `RPC_Error` (`0x60 0x00`: 0x02 invalid command id, 0x01 invalid
//!   subsystem, 0x04 bad length, then the request's two command bytes). AREQs
//!   it does not know are ignored. Garbage on the line is skipped up to the
//!   next valid frame, as zigpy-znp's framing does.
//!
//! Limits: no radio, so nothing happens unless the test makes it happen
//! (devices never age out, rejoin, drop off or lose frames; every device is
//! a direct child of the coordinator, always awake, one endpoint each). No
//! groups, scenes, OTA, source routes, TC link keys, install codes, energy
//! scans or ZDO_MSG_CB_INCOMING; ZDO_DIRECT_CB is stored but changes nothing.
//! The formation channel is the lowest of the mask (a real stick scans for
//! the quietest). Timings are far shorter than a real stick's (reset ~2 s,
//! formation ~3 s); ordering of AREQs is fixed where a radio would vary it.
//! Requests with trailing bytes are refused (RPC_Error 0x04) where Z-Stack
//! would ignore the extra bytes.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{repo_root, Peer, SerialPair, PATIENCE};

const LOG: &str = "znp-stick.log";
const SOCKET: &str = "znp-stick.sock";
/// The simulator's NV memory, kept across restarts.
pub const NV_FILE: &str = "znp-nv.json";

/// The venv with zigpy-znp 1.1.1.
fn zigbee_python() -> PathBuf {
    crate::venv_python("KITE_ZIGBEE_PYTHON", ".venv-zigbee", "zigpy-znp==1.1.1")
}

/// A Zigbee end device the simulator plays; it joins with [`ZnpStick::join`].
/// Devices with On/Off (0x0006) or Level Control (0x0008) among their input
/// clusters are mains-powered routers, the others end devices. Their Basic
/// cluster holds `manufacturer` (0x0004) and `model` (0x0005); the other
/// clusters start with plausible values (OnOff false, CurrentLevel 254,
/// Metering multiplier 1 / divisor 1000, Electrical Measurement multipliers 1,
/// AC current divisor 1000, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDevice {
    pub ieee: u64,
    pub nwk: u16,
    pub manufacturer: String,
    pub model: String,
    pub endpoint: u8,
    pub device_id: u16,
    pub in_clusters: Vec<u16>,
    pub out_clusters: Vec<u16>,
}

/// The simulated stick: its process (killed on drop) on the device end of a
/// socat pair whose other end is [`ZnpStick::port`].
pub struct ZnpStick {
    dir: PathBuf,
    sim: Option<Peer>,
    pair: SerialPair,
    /// Requests counted by the simulator processes before a restart.
    earlier: HashMap<String, usize>,
}

impl ZnpStick {
    /// Starts the simulated stick on a new socat pair in `dir`; its NV file
    /// is `dir/znp-nv.json` (kept across `restart`). The stick has been
    /// running since before Kite opens the port: it sends nothing unasked.
    pub async fn start(dir: &Path) -> Self {
        let socket = dir.join(SOCKET);
        assert!(
            socket.as_os_str().len() < 100,
            "{} is too long for a Unix socket: use a shorter test directory",
            socket.display()
        );
        let pair = SerialPair::start(dir, "znp").await;
        let mut stick = Self {
            dir: dir.to_path_buf(),
            sim: None,
            pair,
            earlier: HashMap::new(),
        };
        stick.launch(false).await;
        stick
    }

    /// The serial port for Kite's `[zigbee] port`.
    pub fn port(&self) -> PathBuf {
        self.pair.kite_end.clone()
    }

    /// Kills and restarts the simulator process on the same pair (a
    /// re-plugged stick): NV kept, runtime state lost, bytes sent to it
    /// meanwhile lost; the new one announces itself with `SYS_RESET_IND`
    /// (power-up) ~50 ms after it starts. Request counts carry over.
    pub async fn restart(&mut self) {
        let counts = self.control(json!({"cmd": "unplug"})).await;
        for (name, n) in counts.as_object().expect("unplug answers the counts") {
            *self.earlier.entry(name.clone()).or_default() += n.as_u64().unwrap_or(0) as usize;
        }
        drop(self.sim.take());
        self.launch(true).await;
    }

    /// A device joins (only if permit join is open and the network started;
    /// returns false otherwise): sends ZDO_TC_DEV_IND and, ~10 ms later,
    /// ZDO_END_DEVICE_ANNCE_IND. A device that joined before rejoins with its
    /// attribute values.
    pub async fn join(&self, device: &SimDevice) -> bool {
        let spec = json!({
            "ieee": device.ieee,
            "nwk": device.nwk,
            "manufacturer": device.manufacturer,
            "model": device.model,
            "endpoint": device.endpoint,
            "device_id": device.device_id,
            "in_clusters": device.in_clusters,
            "out_clusters": device.out_clusters,
        });
        self.control(json!({"cmd": "join", "device": spec}))
            .await
            .as_bool()
            .expect("join answers a boolean")
    }

    /// The device reports attributes: (cluster, [(attr id, zcl type id, value
    /// as serde_json::Value)]), with an LQI. Values: numbers, booleans,
    /// strings for character strings, hex strings or byte arrays for octet
    /// strings, numbers or "aa:bb:.." for EUI64. The device keeps the values
    /// (a later Read Attributes returns them). Dropped, as Z-Stack drops it,
    /// if the network is not started or the host has not registered the
    /// destination endpoint (that of the device's binding of this cluster to
    /// the coordinator, else 1). Panics for a device not on the network.
    pub async fn report(
        &self,
        ieee: u64,
        cluster: u16,
        attributes: &[(u16, u8, serde_json::Value)],
        lqi: u8,
    ) {
        let attributes: Vec<Value> = attributes
            .iter()
            .map(|(id, kind, value)| json!([id, kind, value]))
            .collect();
        self.control(json!({
            "cmd": "report",
            "ieee": ieee,
            "cluster": cluster,
            "attributes": attributes,
            "lqi": lqi,
        }))
        .await;
    }

    /// IAS Zone status change notification (cluster 0x0500 command 0x00,
    /// frame control 0x19: zone status, extended status 0, zone id, delay 0).
    pub async fn zone_status(&self, ieee: u64, status: u16) {
        self.control(json!({"cmd": "zone_status", "ieee": ieee, "status": status}))
            .await;
    }

    /// The device sends any ZCL frame (header included) on `cluster`: a
    /// manufacturer-specific one, say.
    pub async fn frame(&self, ieee: u64, cluster: u16, zcl: &[u8], lqi: u8) {
        let hex: String = zcl.iter().map(|b| format!("{b:02x}")).collect();
        self.control(
            json!({"cmd": "frame", "ieee": ieee, "cluster": cluster, "zcl": hex, "lqi": lqi}),
        )
        .await;
    }

    /// Sends an unsolicited SYS_RESET_IND (reason 2, watchdog: the stick
    /// reset by itself mid-run) ~50 ms later and forgets runtime state
    /// (device state HOLD, permit join, AF registration), keeping NV;
    /// requests are lost until the SYS_RESET_IND.
    pub async fn reset(&self) {
        self.control(json!({"cmd": "reset"})).await;
    }

    /// Stops answering anything, AREQs included (a hung stick) / answers again.
    /// Requests received while silent are counted but never answered.
    pub async fn set_silent(&self, silent: bool) {
        self.control(json!({"cmd": "silent", "silent": silent}))
            .await;
    }

    /// Writes raw bytes to the line (garbage), from the stick to Kite.
    pub async fn garbage(&self, bytes: &[u8]) {
        self.control(json!({"cmd": "garbage", "bytes": bytes}))
            .await;
    }

    /// How many times each request (by name like "ZDO.NodeDescReq",
    /// "SYS.ResetReq", "APP_CNF.BDBStartCommissioning" (or
    /// "AppConfig.BDBStartCommissioning"), "SAPI.ZBWriteConfiguration",
    /// "AF.DataRequest"; zigpy-znp's names; unknown ones like "SYS.0x99") was
    /// received since start: NOT reset by restart (counts of all simulator
    /// processes add up). Requests lost while rebooting or ignored while
    /// silent count too.
    pub async fn requests(&self, name: &str) -> usize {
        let name = canonical(name);
        let now = self
            .control(json!({"cmd": "requests", "name": name}))
            .await
            .as_u64()
            .expect("requests answers a number") as usize;
        now + self.earlier.get(&name).copied().unwrap_or(0)
    }

    /// The network as the stick holds it: (channel, pan_id, extended_pan_id,
    /// network key), None while it has not formed one.
    pub async fn network(&self) -> Option<(u8, u16, u64, [u8; 16])> {
        let network = self.control(json!({"cmd": "network"})).await;
        if network.is_null() {
            return None;
        }
        let number = |i: usize| {
            network[i]
                .as_u64()
                .unwrap_or_else(|| panic!("network: {network}"))
        };
        let key: Vec<u8> = network[3]
            .as_array()
            .unwrap_or_else(|| panic!("network: {network}"))
            .iter()
            .map(|b| b.as_u64().expect("a key byte") as u8)
            .collect();
        Some((
            number(0) as u8,
            number(1) as u16,
            number(2),
            key.try_into().expect("a 16-byte key"),
        ))
    }

    /// Permit join remaining seconds (0 closed).
    pub async fn permit_join(&self) -> u16 {
        self.control(json!({"cmd": "permit_join"}))
            .await
            .as_u64()
            .expect("permit_join answers a number") as u16
    }

    /// The device's On/Off state as the simulated device holds it (None: no
    /// such device, or no On/Off cluster).
    pub async fn on_off(&self, ieee: u64) -> Option<bool> {
        self.control(json!({"cmd": "on_off", "ieee": ieee}))
            .await
            .as_bool()
    }

    /// An attribute's value as the simulated device holds it (null: none).
    pub async fn attribute(&self, ieee: u64, cluster: u16, attribute: u16) -> Value {
        self.control(
            json!({"cmd": "attribute", "ieee": ieee, "cluster": cluster, "attribute": attribute}),
        )
        .await
    }

    /// The device's CurrentLevel as the simulated device holds it.
    pub async fn level(&self, ieee: u64) -> Option<u8> {
        self.control(json!({"cmd": "level", "ieee": ieee}))
            .await
            .as_u64()
            .map(|level| level as u8)
    }

    /// Devices still on the network (a leave removes one), by IEEE address.
    pub async fn devices(&self) -> Vec<u64> {
        self.control(json!({"cmd": "devices"}))
            .await
            .as_array()
            .expect("devices answers a list")
            .iter()
            .map(|ieee| ieee.as_u64().expect("an IEEE address"))
            .collect()
    }

    /// The simulator's log: every frame in and out, decoded.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default()
    }

    async fn launch(&mut self, replug: bool) {
        assert!(self.sim.is_none());
        let socket = self.dir.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG))
            .unwrap();
        let mut command = Command::new(zigbee_python());
        command
            .arg(repo_root().join("tests/support/znp_stick.py"))
            .arg(&self.pair.device_end)
            .arg(&self.dir);
        if replug {
            command.arg("--replug");
        }
        let child = command
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the ZNP stick simulator");
        let mut sim = Peer(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(answer) = self.try_control(&json!({"cmd": "ping"})).await {
                assert_eq!(answer["result"], "pong", "ping: {answer}");
                break;
            }
            if let Some(status) = sim.0.try_wait().unwrap() {
                panic!(
                    "the ZNP stick simulator exited ({status}):\n{}\n(install zigpy-znp with `.ci/install-peers`)",
                    self.log()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ZNP stick simulator did not answer on {} within {PATIENCE:?}:\n{}",
                socket.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.sim = Some(sim);
    }

    async fn try_control(&self, request: &Value) -> std::io::Result<Value> {
        let stream = UnixStream::connect(self.dir.join(SOCKET)).await?;
        let (read, mut write) = stream.into_split();
        write.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    /// One control request; panics with the simulator's error.
    async fn control(&self, request: Value) -> Value {
        let answer = tokio::time::timeout(PATIENCE, self.try_control(&request))
            .await
            .unwrap_or_else(|_| panic!("the ZNP stick simulator did not answer {request}"))
            .unwrap_or_else(|e| {
                panic!(
                    "the ZNP stick simulator is unreachable ({e}) for {request}:\n{}",
                    self.log()
                )
            });
        if answer["ok"] != true {
            panic!(
                "the ZNP stick simulator refused {request}: {}",
                answer["error"]
            );
        }
        answer["result"].clone()
    }
}

impl Drop for ZnpStick {
    fn drop(&mut self) {
        drop(self.sim.take());
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!(
                "--- ZNP stick log (last lines of {}) ---\n{tail}",
                self.dir.join(LOG).display()
            );
        }
    }
}

/// The simulator's name for a request ("APP_CNF." is zigpy-znp's "AppConfig.").
fn canonical(name: &str) -> String {
    for alias in ["APP_CNF.", "APP_CONFIG.", "APPConfig."] {
        if let Some(rest) = name.strip_prefix(alias) {
            return format!("AppConfig.{rest}");
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;

    use tokio::sync::mpsc;

    use super::*;

    /// O_NOCTTY on Linux: opening the pty must not make it our terminal.
    const O_NOCTTY: i32 = 0o400;

    const SYS: u8 = 0x01;
    const AF: u8 = 0x04;
    const ZDO: u8 = 0x05;
    const SAPI: u8 = 0x06;
    const UTIL: u8 = 0x07;
    const APP_CNF: u8 = 0x0F;
    const SREQ: u8 = 0x20;
    const AREQ: u8 = 0x40;
    const SRSP: u8 = 0x60;

    const BULB: u64 = 0x000B_57FF_FE12_3456;
    const SENSOR: u64 = 0x0015_8D00_0102_0304;
    const KEY: [u8; 16] = [
        0x01, 0x13, 0x25, 0x37, 0x49, 0x5B, 0x6D, 0x7F, 0x81, 0x93, 0xA5, 0xB7, 0xC9, 0xDB, 0xED,
        0xFF,
    ];

    /// (cmd0, cmd1, data)
    type Frame = (u8, u8, Vec<u8>);

    /// A tiny MT host: frames written by hand, frames read by a thread that
    /// resynchronises on SOF and checks the FCS.
    struct Mt {
        port: std::fs::File,
        frames: mpsc::UnboundedReceiver<Frame>,
    }

    impl Mt {
        fn open(port: &Path) -> Self {
            let port = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(O_NOCTTY)
                .open(port)
                .unwrap_or_else(|e| panic!("open {}: {e}", port.display()));
            let mut reader = port.try_clone().unwrap();
            let (tx, frames) = mpsc::unbounded_channel();
            std::thread::spawn(move || {
                let mut buffer: Vec<u8> = Vec::new();
                let mut chunk = [0u8; 512];
                loop {
                    let n = match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buffer.extend_from_slice(&chunk[..n]);
                    loop {
                        match buffer.iter().position(|&b| b == 0xFE) {
                            Some(sof) => drop(buffer.drain(..sof)),
                            None => {
                                buffer.clear();
                                break;
                            }
                        }
                        if buffer.len() < 5 {
                            break;
                        }
                        let len = buffer[1] as usize;
                        if len > 250 {
                            buffer.remove(0);
                            continue;
                        }
                        if buffer.len() < len + 5 {
                            break;
                        }
                        let fcs = buffer[1..len + 4].iter().fold(0, |a, b| a ^ b);
                        if fcs != buffer[len + 4] {
                            buffer.remove(0);
                            continue;
                        }
                        let frame = (buffer[2], buffer[3], buffer[4..4 + len].to_vec());
                        buffer.drain(..len + 5);
                        if tx.send(frame).is_err() {
                            return;
                        }
                    }
                }
            });
            Self { port, frames }
        }

        fn write(&mut self, bytes: &[u8]) {
            self.port.write_all(bytes).unwrap();
        }

        fn send(&mut self, cmd0: u8, cmd1: u8, data: &[u8]) {
            let mut frame = vec![0xFE, data.len() as u8, cmd0, cmd1];
            frame.extend_from_slice(data);
            frame.push(frame[1..].iter().fold(0, |a, b| a ^ b));
            self.write(&frame);
        }

        async fn next(&mut self) -> Frame {
            tokio::time::timeout(PATIENCE, self.frames.recv())
                .await
                .expect("a frame from the stick")
                .expect("the port is open")
        }

        /// The next frame with these command bytes; others are skipped.
        async fn expect(&mut self, cmd0: u8, cmd1: u8) -> Vec<u8> {
            loop {
                let (c0, c1, data) = self.next().await;
                if (c0, c1) == (cmd0, cmd1) {
                    return data;
                }
                eprintln!("skipped {c0:02X} {c1:02X} {data:02X?}");
            }
        }

        /// An SREQ and its SRSP.
        async fn request(&mut self, subsystem: u8, id: u8, data: &[u8]) -> Vec<u8> {
            self.send(SREQ | subsystem, id, data);
            self.expect(SRSP | subsystem, id).await
        }

        fn drain(&mut self) {
            while self.frames.try_recv().is_ok() {}
        }

        async fn reset(&mut self) -> Vec<u8> {
            self.send(AREQ | SYS, 0x00, &[0x01]);
            self.expect(AREQ | SYS, 0x80).await
        }

        async fn write_config(&mut self, id: u8, value: &[u8]) {
            let mut data = vec![id, value.len() as u8];
            data.extend_from_slice(value);
            assert_eq!(
                self.request(SAPI, 0x05, &data).await,
                [0x00],
                "config {id:#04x}"
            );
        }

        async fn device_state(&mut self) -> (u16, u8) {
            let info = self.request(UTIL, 0x00, &[]).await;
            assert_eq!(info[0], 0x00);
            (u16::from_le_bytes([info[9], info[10]]), info[12])
        }

        /// Forms a network on channel 15, PAN 0x1A62, as Kite's driver does.
        async fn form(&mut self) {
            self.write_config(0x03, &[0x03]).await;
            self.reset().await;
            self.write_config(0x87, &[0x00]).await;
            self.write_config(0x83, &0x1A62u16.to_le_bytes()).await;
            self.write_config(0x2D, &[0xDD; 8]).await;
            self.write_config(0x84, &(1u32 << 15).to_le_bytes()).await;
            self.write_config(0x62, &KEY).await;
            self.write_config(0x63, &[0x01]).await;
            self.write_config(0x8F, &[0x01]).await;
            let mut primary = vec![0x01];
            primary.extend_from_slice(&(1u32 << 15).to_le_bytes());
            assert_eq!(self.request(APP_CNF, 0x08, &primary).await, [0x00]);
            assert_eq!(self.request(APP_CNF, 0x08, &[0, 0, 0, 0, 0]).await, [0x00]);
            assert_eq!(self.request(APP_CNF, 0x05, &[0x04]).await, [0x00]);
            assert_eq!(
                self.expect(AREQ | APP_CNF, 0x80).await,
                [0x01, 0x02, 0x04],
                "in progress"
            );
            assert_eq!(self.expect(AREQ | ZDO, 0xC0).await, [0x08]);
            assert_eq!(self.expect(AREQ | ZDO, 0xC0).await, [0x09]);
            assert_eq!(
                self.expect(AREQ | APP_CNF, 0x80).await,
                [0x00, 0x02, 0x00],
                "formed"
            );
        }

        async fn register_endpoint(&mut self) -> u8 {
            // Endpoint 1, HA, device 0x0005, version 0, no latency, no clusters.
            let status = self
                .request(
                    AF,
                    0x00,
                    &[0x01, 0x04, 0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00],
                )
                .await;
            status[0]
        }

        async fn permit_join(&mut self, seconds: u8) {
            assert_eq!(
                self.request(ZDO, 0x36, &[0x0F, 0xFC, 0xFF, seconds, 0x01])
                    .await,
                [0x00]
            );
            assert_eq!(self.expect(AREQ | ZDO, 0xB6).await, [0x00, 0x00, 0x00]);
            assert_eq!(self.expect(AREQ | ZDO, 0xCB).await, [seconds]);
        }

        /// AF_DATA_REQUEST from endpoint 1 with a ZCL frame: the confirm's status.
        async fn zcl(&mut self, nwk: u16, cluster: u16, trans: u8, zcl: &[u8]) -> u8 {
            let mut data = nwk.to_le_bytes().to_vec();
            data.extend_from_slice(&[0x01, 0x01]);
            data.extend_from_slice(&cluster.to_le_bytes());
            data.extend_from_slice(&[trans, 0x00, 0x1E, zcl.len() as u8]);
            data.extend_from_slice(zcl);
            assert_eq!(self.request(AF, 0x01, &data).await, [0x00]);
            let confirm = self.expect(AREQ | AF, 0x80).await;
            assert_eq!(&confirm[1..], [0x01, trans], "confirm {confirm:02X?}");
            confirm[0]
        }

        /// The next AF_INCOMING_MSG: (cluster, source, LQI, ZCL payload).
        async fn incoming(&mut self) -> (u16, u16, u8, Vec<u8>) {
            let msg = self.expect(AREQ | AF, 0x81).await;
            let cluster = u16::from_le_bytes([msg[2], msg[3]]);
            let source = u16::from_le_bytes([msg[4], msg[5]]);
            assert_eq!((msg[6], msg[7]), (0x01, 0x01), "endpoints in {msg:02X?}");
            let lqi = msg[9];
            let len = msg[16] as usize;
            (cluster, source, lqi, msg[17..17 + len].to_vec())
        }
    }

    fn bulb() -> SimDevice {
        SimDevice {
            ieee: BULB,
            nwk: 0x4A21,
            manufacturer: "IKEA of Sweden".to_string(),
            model: "TRADFRI bulb E27 WW 806lm".to_string(),
            endpoint: 1,
            device_id: 0x0101,
            in_clusters: vec![0x0000, 0x0003, 0x0004, 0x0005, 0x0006, 0x0008],
            out_clusters: vec![0x0019],
        }
    }

    fn door_sensor() -> SimDevice {
        SimDevice {
            ieee: SENSOR,
            nwk: 0x7E03,
            manufacturer: "LUMI".to_string(),
            model: "lumi.sensor_magnet.aq2".to_string(),
            endpoint: 1,
            device_id: 0x0402,
            in_clusters: vec![0x0000, 0x0001, 0x0500],
            out_clusters: vec![],
        }
    }

    #[tokio::test]
    async fn forms_a_network_and_resumes_it_after_a_replug() {
        let dir = tempfile::tempdir().unwrap();
        let mut stick = ZnpStick::start(dir.path()).await;
        let mut mt = Mt::open(&stick.port());

        assert_eq!(mt.reset().await, [0x00, 2, 1, 2, 7, 1]);
        assert_eq!(mt.request(SYS, 0x01, &[]).await, [0xFF, 0x0F]);
        let version = mt.request(SYS, 0x02, &[]).await;
        assert_eq!(version[..5], [2, 1, 2, 7, 1]);
        assert_eq!(version[5..9], 20230507u32.to_le_bytes());
        // HAS_CONFIGURED_ZSTACK3 does not exist on a new stick.
        assert_eq!(
            mt.request(SYS, 0x08, &[0x60, 0x00, 0x00]).await,
            [0x0A, 0x00]
        );
        assert_eq!(
            mt.request(SYS, 0x07, &[0x60, 0x00, 0x01, 0x00, 0x01, 0x00])
                .await,
            [0x09]
        );
        assert_eq!(
            mt.request(SYS, 0x07, &[0x60, 0x00, 0x01, 0x00, 0x01, 0x00])
                .await,
            [0x00]
        );
        assert_eq!(mt.device_state().await, (0xFFFE, 0));
        // Nothing to resume yet: a new network, still on hold.
        assert_eq!(mt.request(ZDO, 0x40, &[100, 0]).await, [0x01]);
        assert_eq!(stick.network().await, None);

        mt.form().await;
        assert_eq!(
            mt.request(SYS, 0x09, &[0x60, 0x00, 0x00, 0x01, 0x55]).await,
            [0x00]
        );
        assert_eq!(mt.device_state().await, (0x0000, 9));
        assert_eq!(
            stick.network().await,
            Some((15, 0x1A62, 0xDDDD_DDDD_DDDD_DDDD, KEY))
        );
        assert_eq!(
            stick.permit_join().await,
            0,
            "formation leaves joins closed"
        );
        assert!(!stick.join(&bulb()).await);
        assert_eq!(mt.register_endpoint().await, 0x00);
        assert_eq!(mt.register_endpoint().await, 0xB8);

        // Re-plugged: it says so, and still holds its network.
        stick.restart().await;
        assert_eq!(mt.expect(AREQ | SYS, 0x80).await, [0x00, 2, 1, 2, 7, 1]);
        assert_eq!(
            mt.request(SYS, 0x08, &[0x60, 0x00, 0x00]).await,
            [0x00, 0x01, 0x55]
        );
        assert_eq!(mt.device_state().await, (0x0000, 0));
        assert_eq!(stick.permit_join().await, 0);
        assert_eq!(mt.request(ZDO, 0x40, &[100, 0]).await, [0x00]);
        assert_eq!(mt.expect(AREQ | ZDO, 0xC0).await, [0x09]);
        assert_eq!(mt.device_state().await, (0x0000, 9));
        // The registration went with the power.
        assert_eq!(mt.register_endpoint().await, 0x00);
        assert_eq!(
            stick.network().await,
            Some((15, 0x1A62, 0xDDDD_DDDD_DDDD_DDDD, KEY))
        );

        assert_eq!(stick.requests("SYS.ResetReq").await, 2);
        assert_eq!(stick.requests("APP_CNF.BDBStartCommissioning").await, 1);
        assert_eq!(stick.requests("ZDO.StartupFromApp").await, 2);
        assert_eq!(stick.requests("SAPI.ZBWriteConfiguration").await, 8);
        assert_eq!(stick.requests("AF.Register").await, 3);
        assert_eq!(stick.requests("ZDO.NodeDescReq").await, 0);
        assert!(stick.log().contains("SYS.Ping.Req()"));
    }

    #[tokio::test]
    async fn devices_join_are_interviewed_report_and_obey() {
        let dir = tempfile::tempdir().unwrap();
        let stick = ZnpStick::start(dir.path()).await;
        let mut mt = Mt::open(&stick.port());
        mt.reset().await;
        mt.form().await;
        assert_eq!(mt.register_endpoint().await, 0x00);

        // Joins close with a zero duration, and a device is then refused.
        assert_eq!(
            mt.request(ZDO, 0x36, &[0x0F, 0xFC, 0xFF, 0, 1]).await,
            [0x00]
        );
        assert_eq!(mt.expect(AREQ | ZDO, 0xCB).await, [0]);
        assert_eq!(stick.permit_join().await, 0);
        assert!(!stick.join(&bulb()).await);

        mt.permit_join(60).await;
        let open = stick.permit_join().await;
        assert!((59..=60).contains(&open), "{open}");
        assert!(stick.join(&bulb()).await);
        let mut tc = 0x4A21u16.to_le_bytes().to_vec();
        tc.extend_from_slice(&BULB.to_le_bytes());
        tc.extend_from_slice(&[0x00, 0x00]);
        assert_eq!(mt.expect(AREQ | ZDO, 0xCA).await, tc);
        let mut announce = [0x4A21u16.to_le_bytes(), 0x4A21u16.to_le_bytes()].concat();
        announce.extend_from_slice(&BULB.to_le_bytes());
        announce.push(0x8E);
        assert_eq!(mt.expect(AREQ | ZDO, 0xC1).await, announce);

        // The interview.
        assert_eq!(
            mt.request(ZDO, 0x02, &[0x21, 0x4A, 0x21, 0x4A]).await,
            [0x00]
        );
        let node = mt.expect(AREQ | ZDO, 0x82).await;
        assert_eq!(node[..5], [0x21, 0x4A, 0x00, 0x21, 0x4A]);
        assert_eq!(node[5] & 0x07, 1, "a router: {node:02X?}");
        assert_eq!(node[7], 0x8E);
        assert_eq!(u16::from_le_bytes([node[8], node[9]]), 0x117C);
        assert_eq!(
            mt.request(ZDO, 0x05, &[0x21, 0x4A, 0x21, 0x4A]).await,
            [0x00]
        );
        assert_eq!(
            mt.expect(AREQ | ZDO, 0x85).await,
            [0x21, 0x4A, 0x00, 0x21, 0x4A, 0x01, 0x01]
        );
        assert_eq!(
            mt.request(ZDO, 0x04, &[0x21, 0x4A, 0x21, 0x4A, 0x01]).await,
            [0x00]
        );
        let simple = mt.expect(AREQ | ZDO, 0x84).await;
        assert_eq!(
            simple[5..],
            [
                22, 0x01, 0x04, 0x01, 0x01, 0x01, 0x01, 6, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00,
                0x05, 0x00, 0x06, 0x00, 0x08, 0x00, 1, 0x19, 0x00
            ]
        );
        // Read Attributes of Basic: manufacturer, model, and one it lacks.
        let read = [0x00, 0x31, 0x00, 0x04, 0x00, 0x05, 0x00, 0x34, 0x12];
        assert_eq!(mt.zcl(0x4A21, 0x0000, 7, &read).await, 0x00);
        let (cluster, source, lqi, zcl) = mt.incoming().await;
        assert_eq!((cluster, source, lqi), (0x0000, 0x4A21, 120));
        let mut expected = vec![0x18, 0x31, 0x01, 0x04, 0x00, 0x00, 0x42, 14];
        expected.extend_from_slice(b"IKEA of Sweden");
        expected.extend_from_slice(&[0x05, 0x00, 0x00, 0x42, 25]);
        expected.extend_from_slice(b"TRADFRI bulb E27 WW 806lm");
        expected.extend_from_slice(&[0x34, 0x12, 0x86]);
        assert_eq!(zcl, expected);
        // Bind On/Off to the coordinator, configure reporting.
        let mut bind = 0x4A21u16.to_le_bytes().to_vec();
        bind.extend_from_slice(&BULB.to_le_bytes());
        bind.extend_from_slice(&[0x01, 0x06, 0x00, 0x03]);
        let info = mt.request(UTIL, 0x00, &[]).await;
        bind.extend_from_slice(&info[1..9]);
        bind.push(0x01);
        assert_eq!(mt.request(ZDO, 0x21, &bind).await, [0x00]);
        assert_eq!(mt.expect(AREQ | ZDO, 0xA1).await, [0x21, 0x4A, 0x00]);
        let configure = [
            0x00, 0x32, 0x06, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x2C, 0x01,
        ];
        assert_eq!(mt.zcl(0x4A21, 0x0006, 8, &configure).await, 0x00);
        assert_eq!(mt.incoming().await.3, [0x18, 0x32, 0x07, 0x00]);

        // A report, with the LQI it came with.
        stick
            .report(BULB, 0x0008, &[(0x0000, 0x20, json!(200))], 77)
            .await;
        let (cluster, source, lqi, zcl) = mt.incoming().await;
        assert_eq!((cluster, source, lqi), (0x0008, 0x4A21, 77));
        assert_eq!(zcl[2..], [0x0A, 0x00, 0x00, 0x20, 200]);
        assert_eq!(stick.level(BULB).await, Some(200));

        // Commands: a Default Response, then the new state reported.
        assert_eq!(stick.on_off(BULB).await, Some(false));
        assert_eq!(mt.zcl(0x4A21, 0x0006, 9, &[0x01, 0x33, 0x01]).await, 0x00);
        assert_eq!(mt.incoming().await.3, [0x18, 0x33, 0x0B, 0x01, 0x00]);
        assert_eq!(mt.incoming().await.3[2..], [0x0A, 0x00, 0x00, 0x10, 0x01]);
        assert_eq!(stick.on_off(BULB).await, Some(true));
        let level = [0x01, 0x34, 0x04, 0x80, 0x0A, 0x00];
        assert_eq!(mt.zcl(0x4A21, 0x0008, 10, &level).await, 0x00);
        assert_eq!(mt.incoming().await.3, [0x18, 0x34, 0x0B, 0x04, 0x00]);
        let (cluster, _, _, zcl) = mt.incoming().await;
        assert_eq!(
            (cluster, &zcl[2..]),
            (0x0008, &[0x0A, 0x00, 0x00, 0x20, 0x80][..])
        );
        assert_eq!(stick.level(BULB).await, Some(128));
        assert_eq!(mt.zcl(0x4A21, 0x0006, 11, &[0x11, 0x35, 0x02]).await, 0x00);
        assert_eq!(mt.incoming().await.3[2..], [0x0A, 0x00, 0x00, 0x10, 0x00]);
        assert_eq!(stick.on_off(BULB).await, Some(false));

        // An IAS sensor's alarm.
        assert!(stick.join(&door_sensor()).await);
        mt.expect(AREQ | ZDO, 0xC1).await;
        stick.zone_status(SENSOR, 0x0001).await;
        let (cluster, source, _, zcl) = mt.incoming().await;
        assert_eq!((cluster, source), (0x0500, 0x7E03));
        assert_eq!(zcl[0], 0x19);
        assert_eq!(zcl[2..], [0x00, 0x01, 0x00, 0x00, 0xFF, 0x00, 0x00]);

        // The bulb leaves.
        let mut leave = 0x4A21u16.to_le_bytes().to_vec();
        leave.extend_from_slice(&BULB.to_le_bytes());
        leave.push(0x00);
        assert_eq!(mt.request(ZDO, 0x34, &leave).await, [0x00]);
        assert_eq!(mt.expect(AREQ | ZDO, 0xB4).await, [0x21, 0x4A, 0x00]);
        let left = mt.expect(AREQ | ZDO, 0xC9).await;
        assert_eq!(left[..10], tc[..10]);
        assert_eq!(stick.devices().await, [SENSOR]);
        assert_eq!(stick.on_off(BULB).await, None);
        // A command to it is not delivered.
        assert_eq!(mt.zcl(0x4A21, 0x0006, 12, &[0x01, 0x36, 0x01]).await, 0xCD);
        assert_eq!(stick.requests("ZDO.NodeDescReq").await, 1);
        assert_eq!(stick.requests("AF.DataRequest").await, 6);
    }

    #[tokio::test]
    async fn survives_garbage_and_can_hang_or_reset() {
        let dir = tempfile::tempdir().unwrap();
        let stick = ZnpStick::start(dir.path()).await;
        let mut mt = Mt::open(&stick.port());
        mt.reset().await;

        // Garbage both ways, an unknown command: it still answers.
        stick.garbage(&[0xFE, 0x03, 0x61, 0x01, 0x77]).await;
        mt.write(&[
            0x00, 0xFE, 0xFF, 0x12, 0xFE, 0x02, 0x21, 0x01, 0x00, 0x00, 0x13,
        ]);
        assert_eq!(mt.request(SYS, 0x01, &[]).await, [0xFF, 0x0F]);
        assert_eq!(mt.request(SYS, 0x01, &[]).await, [0xFF, 0x0F]);
        mt.send(SREQ | SYS, 0x99, &[]);
        assert_eq!(mt.expect(SRSP, 0x00).await, [0x02, 0x21, 0x99]);
        assert_eq!(stick.requests("SYS.0x99").await, 1);

        // Hung: no answer within a second. Then back.
        stick.set_silent(true).await;
        mt.drain();
        mt.send(SREQ | SYS, 0x01, &[]);
        let answer = tokio::time::timeout(Duration::from_secs(1), mt.next()).await;
        assert!(answer.is_err(), "a silent stick answered {answer:?}");
        stick.set_silent(false).await;
        assert_eq!(mt.request(SYS, 0x01, &[]).await, [0xFF, 0x0F]);

        // It resets by itself and forgets the AF registration.
        mt.form().await;
        assert_eq!(mt.register_endpoint().await, 0x00);
        stick.reset().await;
        assert_eq!(mt.expect(AREQ | SYS, 0x80).await, [0x02, 2, 1, 2, 7, 1]);
        assert_eq!(mt.device_state().await, (0x0000, 0));
        let mut data = 0x1234u16.to_le_bytes().to_vec();
        data.extend_from_slice(&[
            0x01, 0x01, 0x06, 0x00, 0x01, 0x00, 0x1E, 0x03, 0x01, 0x01, 0x01,
        ]);
        assert_eq!(mt.request(AF, 0x01, &data).await, [0x02]);
        assert!(stick.network().await.is_some());
        assert_eq!(stick.requests("SYS.Ping").await, 4);
    }
}
