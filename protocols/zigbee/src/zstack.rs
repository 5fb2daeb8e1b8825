//! Texas Instruments Z-Stack (ZNP) as a [`Coordinator`]: each call is the
//! ZNP request and the indication that answers it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::coordinator::Endpoint;
use crate::coordinator::NetworkSettings;
use crate::coordinator::{Coordinator, CoordinatorError, Indication, LineCounters, Stick};
use crate::driver::{Znp, ZnpError};
use crate::startup::{self, ENDPOINT};
use crate::zcl::{self, ZclHeader};
use crate::znp::{Incoming, Request};

/// How long a device may take to answer a request through the stick.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Indications waiting for the network task; more are dropped and counted.
const INDICATIONS: usize = 256;

/// A Z-Stack stick.
pub struct ZStack {
    znp: Znp,
}

impl From<ZnpError> for CoordinatorError {
    fn from(e: ZnpError) -> Self {
        CoordinatorError {
            link: e.is_link_failure(),
            message: e.to_string(),
        }
    }
}

/// What an unasked ZNP frame means to the network task.
fn indication(incoming: Incoming) -> Option<Indication> {
    Some(match incoming {
        Incoming::ResetInd { .. } => Indication::Reset,
        Incoming::EndDeviceAnnceInd { nwk, ieee, .. } | Incoming::TcDevInd { nwk, ieee, .. } => {
            Indication::Joined { ieee, nwk }
        }
        Incoming::LeaveInd { ieee, rejoin, .. } => Indication::Left { ieee, rejoin },
        Incoming::AfIncomingMsg {
            cluster,
            src_addr,
            lqi,
            data,
            ..
        } => Indication::Message {
            nwk: src_addr,
            cluster,
            lqi,
            data,
        },
        _ => return None,
    })
}

fn unexpected(answer: &Incoming) -> CoordinatorError {
    ZnpError::Unexpected(format!("{answer:?}")).into()
}

/// A ZDO answer's status: 0 is success.
fn zdo_status(command: &str, status: u8) -> Result<(), CoordinatorError> {
    if status == 0 {
        Ok(())
    } else {
        Err(ZnpError::Status {
            command: command.into(),
            status,
        }
        .into())
    }
}

impl Coordinator for ZStack {
    fn open(
        port: &str,
        baud: u32,
        counters: Arc<LineCounters>,
    ) -> Result<(Self, mpsc::Receiver<Indication>), CoordinatorError> {
        let (znp, mut frames) = Znp::open(port, baud, counters.clone())?;
        let (tx, rx) = mpsc::channel(INDICATIONS);
        // Ends with the line, which closes the network task's receiver.
        tokio::spawn(async move {
            while let Some(incoming) = frames.recv().await {
                if let Some(indication) = indication(incoming) {
                    if tx.try_send(indication).is_err() {
                        if tx.is_closed() {
                            return;
                        }
                        counters
                            .dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
        Ok((Self { znp }, rx))
    }

    async fn start(
        &self,
        network: &NetworkSettings,
        formed_before: bool,
    ) -> Result<Stick, CoordinatorError> {
        Ok(startup::start(&self.znp, network, formed_before).await?)
    }

    async fn ping(&self) -> Result<(), CoordinatorError> {
        self.znp.request(&Request::SysPing).await?;
        Ok(())
    }

    async fn permit_join(&self, seconds: u8) -> Result<(), CoordinatorError> {
        self.znp
            .request(&Request::ZdoMgmtPermitJoinReq {
                addr_mode: 0x0f,
                dst: 0xfffc,
                duration: seconds,
                tc_significance: 1,
            })
            .await?;
        Ok(())
    }

    async fn leave(&self, nwk: u16, ieee: u64) -> Result<(), CoordinatorError> {
        let answer = self
            .znp
            .request_then(
                &Request::ZdoMgmtLeaveReq {
                    dst: nwk,
                    ieee,
                    remove_children_rejoin: 0,
                },
                move |i| matches!(i, Incoming::MgmtLeaveRsp { src, .. } if *src == nwk),
                DEVICE_TIMEOUT,
            )
            .await?;
        match answer {
            Incoming::MgmtLeaveRsp { status, .. } => zdo_status("ZDO_MGMT_LEAVE_RSP", status),
            other => Err(unexpected(&other)),
        }
    }

    async fn node_descriptor(&self, nwk: u16) -> Result<(), CoordinatorError> {
        let answer = self
            .znp
            .request_then(
                &Request::ZdoNodeDescReq {
                    dst: nwk,
                    nwk_of_interest: nwk,
                },
                move |i| matches!(i, Incoming::NodeDescRsp { nwk: n, .. } if *n == nwk),
                DEVICE_TIMEOUT,
            )
            .await?;
        match answer {
            Incoming::NodeDescRsp { status, .. } => zdo_status("ZDO_NODE_DESC_RSP", status),
            other => Err(unexpected(&other)),
        }
    }

    async fn active_endpoints(&self, nwk: u16) -> Result<Vec<u8>, CoordinatorError> {
        let answer = self
            .znp
            .request_then(
                &Request::ZdoActiveEpReq {
                    dst: nwk,
                    nwk_of_interest: nwk,
                },
                move |i| matches!(i, Incoming::ActiveEpRsp { nwk: n, .. } if *n == nwk),
                DEVICE_TIMEOUT,
            )
            .await?;
        match answer {
            Incoming::ActiveEpRsp {
                status, endpoints, ..
            } => zdo_status("ZDO_ACTIVE_EP_RSP", status).map(|()| endpoints),
            other => Err(unexpected(&other)),
        }
    }

    async fn simple_descriptor(&self, nwk: u16, id: u8) -> Result<Endpoint, CoordinatorError> {
        let answer = self
            .znp
            .request_then(
                &Request::ZdoSimpleDescReq {
                    dst: nwk,
                    nwk_of_interest: nwk,
                    endpoint: id,
                },
                move |i| {
                    matches!(i, Incoming::SimpleDescRsp { nwk: n, endpoint, .. } if *n == nwk && *endpoint == id)
                },
                DEVICE_TIMEOUT,
            )
            .await?;
        match answer {
            Incoming::SimpleDescRsp {
                status,
                endpoint,
                profile,
                device_id,
                in_clusters,
                out_clusters,
                ..
            } => zdo_status("ZDO_SIMPLE_DESC_RSP", status).map(|()| Endpoint {
                id: endpoint,
                profile,
                device_id,
                in_clusters,
                out_clusters,
            }),
            other => Err(unexpected(&other)),
        }
    }

    async fn bind(
        &self,
        nwk: u16,
        ieee: u64,
        endpoint: u8,
        cluster: u16,
        coordinator: u64,
    ) -> Result<(), CoordinatorError> {
        let answer = self
            .znp
            .request_then(
                &Request::ZdoBindReq {
                    dst: nwk,
                    src_ieee: ieee,
                    src_endpoint: endpoint,
                    cluster,
                    dst_ieee: coordinator,
                    dst_endpoint: ENDPOINT,
                },
                move |i| matches!(i, Incoming::BindRsp { src, .. } if *src == nwk),
                DEVICE_TIMEOUT,
            )
            .await?;
        match answer {
            Incoming::BindRsp { status, .. } => zdo_status("ZDO_BIND_RSP", status),
            other => Err(unexpected(&other)),
        }
    }

    async fn send_zcl(
        &self,
        nwk: u16,
        endpoint: u8,
        cluster: u16,
        frame: Vec<u8>,
    ) -> Result<(), CoordinatorError> {
        // The ZCL sequence number doubles as the AF transaction id.
        let trans_id = frame.get(1).copied().unwrap_or(0);
        let confirm = self
            .znp
            .request_then(
                &Request::AfDataRequest {
                    dst_addr: nwk,
                    dst_endpoint: endpoint,
                    src_endpoint: ENDPOINT,
                    cluster,
                    trans_id,
                    options: 0,
                    radius: 30,
                    data: frame,
                },
                move |i| matches!(i, Incoming::AfDataConfirm { trans_id: t, .. } if *t == trans_id),
                DEVICE_TIMEOUT,
            )
            .await?;
        match confirm {
            Incoming::AfDataConfirm { status, .. } => zdo_status("AF_DATA_CONFIRM", status),
            other => Err(unexpected(&other)),
        }
    }

    async fn ask_zcl(
        &self,
        nwk: u16,
        endpoint: u8,
        cluster: u16,
        frame: Vec<u8>,
        answer: u8,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let seq = zcl::parse_frame(&frame)
            .map(|(header, _)| header.seq)
            .map_err(|e| ZnpError::Unexpected(e.to_string()))?;
        let reply = self.znp.expect(move |incoming| match incoming {
            Incoming::AfIncomingMsg {
                src_addr,
                cluster: c,
                data,
                ..
            } if *src_addr == nwk && *c == cluster => {
                zcl::parse_frame(data).is_ok_and(|(h, _): (ZclHeader, _)| {
                    !h.cluster_specific && h.seq == seq && h.command == answer
                })
            }
            _ => false,
        });
        self.send_zcl(nwk, endpoint, cluster, frame).await?;
        match self.znp.wait(reply, "a ZCL answer", DEVICE_TIMEOUT).await? {
            Incoming::AfIncomingMsg { data, .. } => zcl::parse_frame(&data)
                .map(|(_, payload)| payload.to_vec())
                .map_err(|e| ZnpError::Unexpected(e.to_string()).into()),
            other => Err(unexpected(&other)),
        }
    }
}
