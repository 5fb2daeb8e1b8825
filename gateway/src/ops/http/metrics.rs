//! `/metrics`: the pipeline's counters in the Prometheus text format, one
//! family at a time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ops::vitals::{Verdict, Vitals};

/// Prometheus text exposition, one family at a time.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let escaped = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{key}=\"{escaped}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one sample per item.
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        items: &[(String, T)],
        value: impl Fn(&T) -> f64,
    ) {
        self.family(name, kind, help);
        for (item, x) in items {
            self.sample(name, &[(label, item)], value(x));
        }
    }
}

fn count(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

pub(super) fn render(vitals: &Vitals, verdict: &Verdict) -> String {
    let mut out = Exposition(String::new());
    out.family(
        "kite_live",
        "gauge",
        "1 while data can move end to end (what feeds the watchdog)",
    );
    out.sample("kite_live", &[], f64::from(u8::from(verdict.live)));
    if let Some(stats) = &verdict.buffer {
        out.family(
            "kite_buffer_rows",
            "gauge",
            "Messages waiting in the buffer",
        );
        out.sample("kite_buffer_rows", &[], stats.rows as f64);
        out.family(
            "kite_buffer_bytes",
            "gauge",
            "Size of the buffered messages",
        );
        out.sample("kite_buffer_bytes", &[], stats.bytes as f64);
        out.family(
            "kite_buffer_oldest_age_seconds",
            "gauge",
            "Age of the oldest buffered message (0 when empty)",
        );
        let age = stats
            .oldest_ts_ms
            .map_or(0.0, |ts| (kite_core::now_ms() - ts).max(0) as f64 / 1000.0);
        out.sample("kite_buffer_oldest_age_seconds", &[], age);
        out.family(
            "kite_buffer_dropped_total",
            "counter",
            "Messages dropped by the buffer's size limit",
        );
        out.sample("kite_buffer_dropped_total", &[], stats.dropped as f64);
        out.family(
            "kite_buffer_set_aside_total",
            "counter",
            "Messages the broker cannot take (too large), moved to the buffer's set_aside table",
        );
        out.sample("kite_buffer_set_aside_total", &[], stats.set_aside as f64);
        out.family(
            "kite_buffer_thinned_total",
            "counter",
            "Telemetry rows removed by downsampling (buffer.on_full = \"downsample\")",
        );
        out.sample("kite_buffer_thinned_total", &[], stats.thinned as f64);
        out.family(
            "kite_buffer_keep_every",
            "gauge",
            "Downsampling keeps one sample in this many per device (1: every sample)",
        );
        out.sample("kite_buffer_keep_every", &[], stats.keep_every as f64);
    }
    let ingest = &vitals.ingest;
    out.family(
        "kite_buffer_lost_total",
        "counter",
        "Messages read or produced that were never committed: the gateway stopped while the buffer kept failing",
    );
    out.sample("kite_buffer_lost_total", &[], ingest.lost() as f64);
    out.family(
        "kite_buffer_too_large_total",
        "counter",
        "Point values too large for any message, sent as bad readings",
    );
    out.sample("kite_buffer_too_large_total", &[], count(&ingest.too_large));
    out.family(
        "kite_buffer_commit_failures_total",
        "counter",
        "Commits that failed and were tried again (database locked, disk full, I/O error)",
    );
    out.sample(
        "kite_buffer_commit_failures_total",
        &[],
        count(&ingest.commit_failures),
    );
    out.family(
        "kite_history_dropped_total",
        "counter",
        "Readings the status page's history did not keep (bounds reached); they are in the buffer",
    );
    out.sample(
        "kite_history_dropped_total",
        &[],
        vitals.history.dropped() as f64,
    );
    out.family(
        "kite_ingest_committed_total",
        "counter",
        "Messages committed to the buffer",
    );
    out.sample(
        "kite_ingest_committed_total",
        &[],
        count(&vitals.ingest.committed),
    );

    let uplink = &vitals.uplink;
    out.family(
        "kite_uplink_connected",
        "gauge",
        "1 while connected to the broker",
    );
    out.sample(
        "kite_uplink_connected",
        &[],
        f64::from(u8::from(uplink.connected.load(Ordering::Relaxed))),
    );
    for (name, help, counter) in [
        (
            "kite_uplink_published_total",
            "Messages published",
            &uplink.published,
        ),
        (
            "kite_uplink_acknowledged_total",
            "Publishes the broker acknowledged",
            &uplink.acknowledged,
        ),
        (
            "kite_uplink_reconnects_total",
            "Connections lost after being up",
            &uplink.reconnects,
        ),
        (
            "kite_uplink_writes_rejected_total",
            "Writes from the cloud that failed or were refused",
            &uplink.writes_rejected,
        ),
        (
            "kite_uplink_results_dropped_total",
            "Write results that could not be handed to the buffer",
            &uplink.results_dropped,
        ),
        (
            "kite_uplink_replayed_total",
            "Backlog rows replayed behind live data (replay = \"live_first\")",
            &uplink.replayed,
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &[], count(counter));
    }
    out.family(
        "kite_uplink_backlog",
        "gauge",
        "Backlog rows still to replay behind live data (replay = \"live_first\")",
    );
    out.sample("kite_uplink_backlog", &[], count(&uplink.backlog));
    let certificates = vitals.certificates.get();
    if !certificates.is_empty() {
        out.family(
            "kite_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When a certificate of mqtt.ca_file or mqtt.cert_file stops being valid",
        );
        for certificate in certificates.iter() {
            out.sample(
                "kite_tls_certificate_expiry_timestamp_seconds",
                &[
                    ("file", certificate.file.key()),
                    ("subject", &certificate.subject),
                ],
                (certificate.not_after_ms / 1000) as f64,
            );
        }
    }

    let field = vitals.field.get();
    let devices = &field.devices;
    out.each(
        "kite_device_reads_total",
        "counter",
        "Successful requests or decoded frames",
        "device",
        devices,
        |h| count(&h.reads),
    );
    out.each(
        "kite_device_timeouts_total",
        "counter",
        "Requests not answered in time",
        "device",
        devices,
        |h| count(&h.timeouts),
    );
    out.each(
        "kite_device_errors_total",
        "counter",
        "Exceptions, garbled replies, frames that did not decode",
        "device",
        devices,
        |h| count(&h.errors),
    );
    out.each(
        "kite_device_discarded_bytes_total",
        "counter",
        "Bytes dropped by framing",
        "device",
        devices,
        |h| count(&h.discarded_bytes),
    );
    out.each(
        "kite_device_quarantined",
        "gauge",
        "1 while the device is not answering and only probed",
        "device",
        devices,
        |h| f64::from(u8::from(h.quarantined.load(Ordering::Relaxed))),
    );
    out.each(
        "kite_device_offline",
        "gauge",
        "1 while the device's link (connection, port, line) is down",
        "device",
        devices,
        |h| f64::from(u8::from(h.offline.load(Ordering::Relaxed))),
    );
    out.each(
        "kite_device_stale",
        "gauge",
        "1 while a device that sends on its own (BLE) has not been heard for its stale_after",
        "device",
        devices,
        |h| f64::from(u8::from(h.stale.load(Ordering::Relaxed))),
    );
    out.family(
        "kite_device_last_seen_timestamp_seconds",
        "gauge",
        "When the device last answered or sent something readable",
    );
    for (device, health) in devices {
        let ms = health.last_seen_ms.load(Ordering::Relaxed);
        if ms > 0 {
            out.sample(
                "kite_device_last_seen_timestamp_seconds",
                &[("device", device.as_str())],
                ms as f64 / 1000.0,
            );
        }
    }
    out.family(
        "kite_device_poll_duration_seconds",
        "summary",
        "Time spent polling the device, and how many polls were timed",
    );
    for (device, health) in devices {
        let labels = [("device", device.as_str())];
        out.sample(
            "kite_device_poll_duration_seconds_sum",
            &labels,
            count(&health.poll_micros) / 1e6,
        );
        out.sample(
            "kite_device_poll_duration_seconds_count",
            &labels,
            count(&health.polls),
        );
    }

    let buses = &field.buses;
    out.each(
        "kite_bus_up",
        "gauge",
        "1 while the port or connection is open",
        "bus",
        buses,
        |h| f64::from(u8::from(h.link_up.load(Ordering::Relaxed))),
    );
    out.each(
        "kite_bus_missed_polls_total",
        "counter",
        "Polls that could not start on time: the bus is oversubscribed",
        "bus",
        buses,
        |h| count(&h.missed_polls),
    );
    out.each(
        "kite_bus_link_failures_total",
        "counter",
        "Port or connection failures",
        "bus",
        buses,
        |h| count(&h.link_failures),
    );

    if let Some((adapter, ble)) = &field.ble {
        let ble = [(adapter.clone(), ble.clone())];
        out.each(
            "kite_ble_scanning",
            "gauge",
            "1 while the adapter is discovering",
            "adapter",
            &ble,
            |h| f64::from(u8::from(h.state() == "scanning")),
        );
        out.each(
            "kite_ble_restarts_total",
            "counter",
            "Times discovery was started again (silence, the adapter back)",
            "adapter",
            &ble,
            |h| count(&h.restarts),
        );
        out.each(
            "kite_ble_advertisements_total",
            "counter",
            "Advertisements received",
            "adapter",
            &ble,
            |h| count(&h.advertisements),
        );
        out.each(
            "kite_ble_decode_errors_total",
            "counter",
            "Advertisements of configured devices that did not decode (malformed, wrong key, replayed)",
            "adapter",
            &ble,
            |h| count(&h.decode_errors),
        );
        out.each(
            "kite_ble_discovered_total",
            "counter",
            "Reports of unknown devices",
            "adapter",
            &ble,
            |h| count(&h.discovered),
        );
        out.each(
            "kite_ble_dropped_total",
            "counter",
            "Advertisements and reports dropped because the gateway fell behind",
            "adapter",
            &ble,
            |h| count(&h.dropped),
        );
    }

    if let Some(zigbee) = &field.zigbee {
        let load = |counter: &AtomicU64| count(counter);
        let families: [(&str, &str, &str, f64); 7] = [
            (
                "kite_zigbee_running",
                "gauge",
                "1 while the coordinator runs the network",
                f64::from(u8::from(zigbee.state() == "running")),
            ),
            (
                "kite_zigbee_devices",
                "gauge",
                "Devices on the network",
                load(&zigbee.devices),
            ),
            (
                "kite_zigbee_joined_total",
                "counter",
                "Devices that joined since the gateway started",
                load(&zigbee.joined_since_start),
            ),
            (
                "kite_zigbee_coordinator_resets_total",
                "counter",
                "Times the stick reset by itself or stopped answering and was started again",
                load(&zigbee.coordinator_resets),
            ),
            (
                "kite_zigbee_interviews_failed_total",
                "counter",
                "Device interviews that failed (retried with back-off)",
                load(&zigbee.interviews_failed),
            ),
            (
                "kite_zigbee_discarded_bytes_total",
                "counter",
                "Bytes on the coordinator's line that were not frames",
                load(&zigbee.line.discarded_bytes),
            ),
            (
                "kite_zigbee_dropped_total",
                "counter",
                "Indications dropped because the gateway fell behind",
                load(&zigbee.line.dropped),
            ),
        ];
        for (name, kind, help, value) in families {
            out.family(name, kind, help);
            out.sample(name, &[], value);
        }
    }
    out.each(
        "kite_device_linkquality",
        "gauge",
        "Link quality (LQI) of a Zigbee device's last message",
        "device",
        &field
            .devices
            .iter()
            .filter_map(|(name, h)| h.linkquality().map(|lqi| (name.clone(), lqi)))
            .collect::<Vec<_>>(),
        |lqi| f64::from(*lqi),
    );

    let plugins = vitals.plugins.get();
    let plugins = plugins.as_slice();
    out.each(
        "kite_plugin_calls_total",
        "counter",
        "Calls into the plug-in",
        "plugin",
        plugins,
        |c| count(&c.calls),
    );
    out.each(
        "kite_plugin_failures_total",
        "counter",
        "Calls that failed",
        "plugin",
        plugins,
        |c| count(&c.failures),
    );
    out.each(
        "kite_plugin_traps_total",
        "counter",
        "Calls that trapped",
        "plugin",
        plugins,
        |c| count(&c.traps),
    );
    out.each(
        "kite_plugin_timeouts_total",
        "counter",
        "Calls stopped by the time limit",
        "plugin",
        plugins,
        |c| count(&c.timeouts),
    );
    out.each(
        "kite_plugin_busy_seconds_total",
        "counter",
        "Time spent inside the plug-in",
        "plugin",
        plugins,
        |c| count(&c.busy_nanos) / 1e9,
    );
    out.each(
        "kite_plugin_queued_batches",
        "gauge",
        "Batches offered to the plug-in and not yet taken up",
        "plugin",
        plugins,
        |c| count(&c.queued),
    );
    out.each(
        "kite_plugin_lost_batches_total",
        "counter",
        "Batches whose outputs were lost: the call failed, or the gateway stopped first",
        "plugin",
        plugins,
        |c| count(&c.lost_batches),
    );
    out.each(
        "kite_plugin_skipped_batches_total",
        "counter",
        "Batches not offered: busy, backing off or disabled",
        "plugin",
        plugins,
        |c| count(&c.skipped_batches),
    );
    out.0
}
