//! Bringing a Z-Stack 3 coordinator up: reset it, check it answers, then
//! resume the network it holds, or form the gateway's network on it.

use std::time::Duration;

use tracing::{info, warn};

use crate::coordinator::{NetworkSettings, Started, Stick};
use crate::driver::{Znp, ZnpError};
use crate::znp::{self, Incoming, Request};

/// How long a reset may take to be announced.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long forming or resuming may take to reach "started as coordinator".
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// ZDO device state: started as a coordinator.
const STARTED_AS_COORDINATOR: u8 = 9;
/// The value of the "configured" NV item once Kite formed a network on a stick.
const CONFIGURED: u8 = 0x55;
/// BDB commissioning mode: network formation.
const FORMATION: u8 = 0x04;
/// Kite's own endpoint, on the Home Automation profile.
pub const ENDPOINT: u8 = 1;
const HOME_AUTOMATION: u16 = 0x0104;

/// Resets the stick and brings `network` up on it: resumed when the stick
/// holds it (`formed_before`: the gateway formed exactly this network on
/// this stick's predecessor or itself, and the stick says it is
/// configured), formed otherwise.
pub async fn start(
    znp: &Znp,
    network: &NetworkSettings,
    formed_before: bool,
) -> Result<Stick, ZnpError> {
    let (major, minor, maint) = reset(znp).await?;
    info!("Z-Stack {major}.{minor}.{maint}");
    znp.request(&Request::SysPing).await?;
    let nv = znp
        .request_accepting(
            &Request::SysOsalNvRead {
                id: znp::NV_HAS_CONFIGURED_ZSTACK3,
                offset: 0,
            },
            // Any status: an item never written is "not configured".
            &(0..=255).collect::<Vec<u8>>(),
        )
        .await?;
    let configured = nv.first() == Some(&0) && nv.last() == Some(&CONFIGURED);
    let started = if configured && formed_before {
        resume(znp).await?
    } else {
        if configured {
            warn!("the Zigbee stick holds a network this gateway did not form with these settings: forming its own");
        }
        form(znp, network).await?;
        Started::Formed
    };
    let info = znp.request(&Request::UtilGetDeviceInfo).await?;
    let ieee = info
        .get(1..9)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| ZnpError::Unexpected("short UTIL_GET_DEVICE_INFO answer".into()))?;
    // Already registered after a soft reset that kept it: fine.
    znp.request_accepting(
        &Request::AfRegister {
            endpoint: ENDPOINT,
            profile: HOME_AUTOMATION,
            device_id: 0x0005,
            version: 0,
            latency: 0,
            in_clusters: Vec::new(),
            out_clusters: Vec::new(),
        },
        &[0x00, 0xb8],
    )
    .await?;
    Ok(Stick { ieee, started })
}

/// A soft reset, and the version the stick announces.
async fn reset(znp: &Znp) -> Result<(u8, u8, u8), ZnpError> {
    let announced = znp
        .send_then(
            &Request::SysResetReq { soft: true },
            |incoming| matches!(incoming, Incoming::ResetInd { .. }),
            RESET_TIMEOUT,
        )
        .await?;
    match announced {
        Incoming::ResetInd {
            major,
            minor,
            maint,
            ..
        } => Ok((major, minor, maint)),
        other => Err(ZnpError::Unexpected(format!("{other:?}"))),
    }
}

async fn resume(znp: &Znp) -> Result<Started, ZnpError> {
    let started = znp.wait_for(
        "the network to resume",
        |incoming| {
            matches!(incoming, Incoming::StateChangeInd { state } if *state == STARTED_AS_COORDINATOR)
        },
        START_TIMEOUT,
    );
    // 0: restored; 1: a new network (it did not hold one after all).
    let answer = znp
        .request_accepting(&Request::ZdoStartupFromApp { delay_ms: 100 }, &[0, 1])
        .await?;
    started.await?;
    info!(
        restored = answer.first() == Some(&0),
        "Zigbee network resumed"
    );
    Ok(Started::Resumed)
}

async fn form(znp: &Znp, network: &NetworkSettings) -> Result<(), ZnpError> {
    info!(
        channel = network.channel,
        pan_id = format_args!("{:#06x}", network.pan_id),
        "forming the Zigbee network"
    );
    // Clear the stick's state and configuration, then start from scratch.
    write_config(znp, znp::ZCD_NV_STARTUP_OPTION, vec![0x03]).await?;
    reset(znp).await?;
    write_config(znp, znp::ZCD_NV_LOGICAL_TYPE, vec![0x00]).await?;
    write_config(
        znp,
        znp::ZCD_NV_PANID,
        network.pan_id.to_le_bytes().to_vec(),
    )
    .await?;
    write_config(
        znp,
        znp::ZCD_NV_EXTENDED_PAN_ID,
        network.extended_pan_id.to_le_bytes().to_vec(),
    )
    .await?;
    let channels = 1u32 << network.channel;
    write_config(znp, znp::ZCD_NV_CHANLIST, channels.to_le_bytes().to_vec()).await?;
    write_config(znp, znp::ZCD_NV_PRECFGKEY, network.network_key.to_vec()).await?;
    write_config(znp, znp::ZCD_NV_PRECFGKEYS_ENABLE, vec![0x01]).await?;
    // ZDO responses as callbacks, so interviews see them.
    write_config(znp, znp::ZCD_NV_ZDO_DIRECT_CB, vec![0x01]).await?;
    znp.request(&Request::AppCnfBdbSetChannel {
        primary: true,
        channels,
    })
    .await?;
    znp.request(&Request::AppCnfBdbSetChannel {
        primary: false,
        channels: 0,
    })
    .await?;
    znp.request_then(
        &Request::AppCnfBdbStartCommissioning { mode: FORMATION },
        |incoming| {
            matches!(incoming, Incoming::StateChangeInd { state } if *state == STARTED_AS_COORDINATOR)
        },
        START_TIMEOUT,
    )
    .await?;
    // 0: it existed; 9: created now.
    znp.request_accepting(
        &Request::SysOsalNvItemInit {
            id: znp::NV_HAS_CONFIGURED_ZSTACK3,
            len: 1,
            init: vec![0x00],
        },
        &[0x00, 0x09],
    )
    .await?;
    znp.request(&Request::SysOsalNvWrite {
        id: znp::NV_HAS_CONFIGURED_ZSTACK3,
        offset: 0,
        value: vec![CONFIGURED],
    })
    .await?;
    info!("Zigbee network formed");
    Ok(())
}

async fn write_config(znp: &Znp, id: u8, value: Vec<u8>) -> Result<(), ZnpError> {
    znp.request(&Request::ZbWriteConfiguration { id, value })
        .await
        .map(drop)
}
