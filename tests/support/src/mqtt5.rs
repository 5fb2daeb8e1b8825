//! An MQTT 5 subscriber, to see the properties a broker forwards with each
//! message (user properties, content type, message expiry).

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::PATIENCE;

/// A message and the properties it came with.
#[derive(Debug, Clone)]
pub struct Received5 {
    pub topic: String,
    pub payload: Value,
    pub properties: PublishProperties,
}

impl Received5 {
    /// The value of the user property `key`.
    pub fn user_property(&self, key: &str) -> Option<&str> {
        self.properties
            .user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Subscriber5 {
    _client: AsyncClient,
    messages: mpsc::UnboundedReceiver<Received5>,
}

impl Subscriber5 {
    /// Connects with MQTT 5 and returns once `filter` is subscribed.
    pub async fn connect(port: u16, filter: &str, client_id: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(std::time::Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut subscribed = Some(subscribed);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(subscribed) = subscribed.take() {
                            let _ = subscribed.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(publish)) => {
                        let received = Received5 {
                            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                            payload: serde_json::from_slice(&publish.payload)
                                .unwrap_or(Value::Null),
                            properties: publish.properties.unwrap_or_default(),
                        };
                        if tx.send(received).is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(PATIENCE, ready)
            .await
            .expect("the MQTT 5 subscription is acknowledged")
            .unwrap();
        Self {
            _client: client,
            messages,
        }
    }

    /// The next message on `topic` that `accept` takes.
    pub async fn next_on(
        &mut self,
        topic: &str,
        mut accept: impl FnMut(&Received5) -> bool,
    ) -> Received5 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let received = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for a message on {topic}"))
                .expect("the subscriber is connected");
            if received.topic == topic && accept(&received) {
                return received;
            }
        }
    }
}
