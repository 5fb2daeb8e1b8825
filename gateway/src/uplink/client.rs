//! The uplink's MQTT client, whichever protocol version `mqtt.version` asks
//! for: rumqttc's MQTT 3.1.1 client or its MQTT 5 one, behind the few calls
//! the connection loop makes and the few events it acts on.
//!
//! With MQTT 5 every publish carries the user properties `gateway` (the
//! gateway's id) and `content-type`, and the standard content type;
//! telemetry carries `message_expiry` when it is set. Reason codes the
//! broker sends (a refused CONNECT, PUBACK or SUBACK, a DISCONNECT) are
//! put in words for the log and the connection loop.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{
    Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};

use crate::config::{Mqtt5, MqttConfig};

/// What a payload is, for MQTT 5's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    Json,
    Sparkplug,
}

impl Content {
    fn mime(self) -> &'static str {
        match self {
            Content::Json => "application/json",
            Content::Sparkplug => "application/vnd.sparkplug.b+protobuf",
        }
    }
}

/// One publish of the uplink (always QoS 1).
pub(super) struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub content: Content,
    /// Telemetry, which goes stale: it carries `message_expiry`.
    pub telemetry: bool,
}

/// A message from the broker.
pub(super) struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// What the connection loop hears from the event loop.
pub(super) enum Heard {
    ConnAck,
    /// The next publish went out with this packet id.
    Sent(u16),
    /// A PUBACK; with MQTT 5, why the broker refused the message, if it did.
    PubAck {
        pkid: u16,
        refused: Option<Refusal>,
    },
    Message(Message),
    /// Our DISCONNECT went out.
    Disconnected,
    Other,
}

/// Why an MQTT 5 broker refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub reason: &'static str,
    /// Whether the broker would refuse it again (authorization, its topic or
    /// its payload): it is set aside rather than sent again.
    pub lasting: bool,
}

pub(super) enum Client {
    V3(rumqttc::AsyncClient),
    V5 {
        client: rumqttc::v5::AsyncClient,
        /// The user properties of every publish, besides `content-type`.
        gateway: String,
        message_expiry: Option<u32>,
    },
}

pub(super) enum Events {
    V3(Box<EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// The will of a connection.
pub(super) struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A client and its event loop for one connection to the broker of `config`.
pub(super) fn connect(config: &MqttConfig, gateway_id: &str, will: Will) -> (Client, Events) {
    let capacity = usize::from(config.max_inflight) + 64;
    match &config.v5 {
        None => {
            let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
            options
                .set_keep_alive(config.keep_alive)
                .set_clean_session(true)
                .set_inflight(config.max_inflight.saturating_add(16))
                .set_request_channel_capacity(capacity)
                .set_max_packet_size(256 << 10, 64 << 20)
                .set_last_will(LastWill::new(
                    will.topic,
                    will.payload,
                    QoS::AtLeastOnce,
                    will.retain,
                ));
            if let Some(username) = &config.username {
                let password = config.password.as_ref().map_or("", |p| p.expose());
                options.set_credentials(username, password);
            }
            if let Some(transport) = transport(config) {
                options.set_transport(transport);
            }
            let (client, events) = rumqttc::AsyncClient::new(options, capacity);
            (Client::V3(client), Events::V3(Box::new(events)))
        }
        Some(Mqtt5 {
            session_expiry,
            message_expiry,
        }) => {
            use rumqttc::v5::MqttOptions as Options5;
            let mut options = Options5::new(&config.client_id, &config.host, config.port);
            let session_expiry = seconds(*session_expiry);
            options
                .set_keep_alive(config.keep_alive)
                // A session the broker keeps holds the commands sent
                // meanwhile; without one, each connection starts clean.
                .set_clean_start(session_expiry == 0)
                .set_session_expiry_interval((session_expiry > 0).then_some(session_expiry))
                .set_outgoing_inflight_upper_limit(config.max_inflight.saturating_add(16))
                .set_request_channel_capacity(capacity)
                .set_max_packet_size(Some(64 << 20))
                .set_user_properties(vec![("gateway".into(), gateway_id.into())])
                .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    will.topic,
                    will.payload,
                    QoS5::AtLeastOnce,
                    will.retain,
                    None,
                ));
            if let Some(username) = &config.username {
                let password = config.password.as_ref().map_or("", |p| p.expose());
                options.set_credentials(username, password);
            }
            if let Some(transport) = transport(config) {
                options.set_transport(transport);
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(options, capacity);
            let client = Client::V5 {
                client,
                gateway: gateway_id.into(),
                message_expiry: message_expiry.map(seconds),
            };
            (client, Events::V5(Box::new(events)))
        }
    }
}

fn transport(config: &MqttConfig) -> Option<Transport> {
    config
        .tls
        .as_ref()
        .map(|tls| Transport::tls_with_config(TlsConfiguration::Rustls(tls.client.clone())))
}

fn seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

impl Client {
    /// Hands a QoS 1 publish to the event loop, without waiting.
    pub(super) fn publish(&self, publish: Publish) -> Result<(), String> {
        match self {
            Client::V3(client) => client
                .try_publish(
                    publish.topic,
                    QoS::AtLeastOnce,
                    publish.retain,
                    publish.payload,
                )
                .map_err(|e| e.to_string()),
            Client::V5 {
                client,
                gateway,
                message_expiry,
            } => {
                let mime = publish.content.mime();
                let properties = PublishProperties {
                    payload_format_indicator: Some(u8::from(publish.content == Content::Json)),
                    message_expiry_interval: message_expiry.filter(|_| publish.telemetry),
                    content_type: Some(mime.into()),
                    user_properties: vec![
                        ("gateway".into(), gateway.clone()),
                        ("content-type".into(), mime.into()),
                    ],
                    ..PublishProperties::default()
                };
                client
                    .try_publish_with_properties(
                        publish.topic,
                        QoS5::AtLeastOnce,
                        publish.retain,
                        publish.payload,
                        properties,
                    )
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub(super) fn subscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::V3(client) => client
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5 { client, .. } => client
                .try_subscribe(filter, QoS5::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    pub(super) fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V3(client) => client.try_disconnect().map_err(|e| e.to_string()),
            Client::V5 { client, .. } => client.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

impl Events {
    /// The next event that matters to the connection loop; an error ends
    /// the connection.
    pub(super) async fn poll(&mut self) -> Result<Heard, String> {
        match self {
            Events::V3(events) => Ok(match events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Incoming::ConnAck(_)) => Heard::ConnAck,
                Event::Outgoing(Outgoing::Publish(pkid)) => Heard::Sent(pkid),
                Event::Outgoing(Outgoing::Disconnect) => Heard::Disconnected,
                Event::Incoming(Incoming::PubAck(ack)) => Heard::PubAck {
                    pkid: ack.pkid,
                    refused: None,
                },
                Event::Incoming(Incoming::Publish(publish)) => Heard::Message(Message {
                    topic: publish.topic,
                    payload: publish.payload,
                    retain: publish.retain,
                }),
                _ => Heard::Other,
            }),
            Events::V5(events) => {
                use rumqttc::v5::{ConnectionError, Event as Event5};
                let event = events.poll().await.map_err(|e| match e {
                    ConnectionError::ConnectionRefused(code) => {
                        format!(
                            "the broker refused the connection: {}",
                            connect_reason(code)
                        )
                    }
                    other => other.to_string(),
                })?;
                Ok(match event {
                    Event5::Incoming(Packet::ConnAck(_)) => Heard::ConnAck,
                    Event5::Outgoing(Outgoing::Publish(pkid)) => Heard::Sent(pkid),
                    Event5::Outgoing(Outgoing::Disconnect) => Heard::Disconnected,
                    Event5::Incoming(Packet::PubAck(ack)) => Heard::PubAck {
                        pkid: ack.pkid,
                        refused: refusal(ack.reason),
                    },
                    Event5::Incoming(Packet::Publish(publish)) => Heard::Message(Message {
                        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                        payload: publish.payload,
                        retain: publish.retain,
                    }),
                    Event5::Incoming(Packet::SubAck(ack)) => {
                        for code in &ack.return_codes {
                            if !matches!(code, SubscribeReasonCode::Success(_)) {
                                tracing::warn!(reason = ?code, "the broker refused a subscription");
                            }
                        }
                        Heard::Other
                    }
                    Event5::Incoming(Packet::Disconnect(disconnect)) => {
                        return Err(format!(
                            "the broker disconnected: {:?}",
                            disconnect.reason_code
                        ))
                    }
                    _ => Heard::Other,
                })
            }
        }
    }
}

fn connect_reason(code: ConnectReturnCode) -> String {
    format!("{code:?}")
}

/// Why a PUBACK's reason code refuses the message; `None` for success
/// (no matching subscribers is a success: the broker took it).
fn refusal(reason: PubAckReason) -> Option<Refusal> {
    let (reason, lasting) = match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => return None,
        PubAckReason::NotAuthorized => ("not authorized", true),
        PubAckReason::TopicNameInvalid => ("topic name invalid", true),
        PubAckReason::PayloadFormatInvalid => ("payload format invalid", true),
        PubAckReason::QuotaExceeded => ("quota exceeded", false),
        PubAckReason::PacketIdentifierInUse => ("packet identifier in use", false),
        PubAckReason::ImplementationSpecificError => ("implementation specific error", false),
        PubAckReason::UnspecifiedError => ("unspecified error", false),
    };
    Some(Refusal { reason, lasting })
}
