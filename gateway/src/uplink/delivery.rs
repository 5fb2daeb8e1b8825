//! Which buffered row each publish of one connection carries, so that a row
//! is deleted only on the PUBACK of its own publish, and, with
//! `replay = "live_first"`, how the rows stored before the connection are
//! replayed behind live ones. Pure: the connection loop feeds it rumqttc's
//! events and the clock, and it is tested without a broker.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Which buffered row each publish of one connection carries. Pure state:
/// the connection loop feeds it rumqttc's events. Every QoS 1 publish is
/// counted until its PUBACK, so that births and status messages take their
/// place in the window too.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// One entry per publish handed to rumqttc, in order: the row's seq for
    /// telemetry, `None` for status, births and results. rumqttc reports
    /// each publish's packet id in the same order.
    awaiting_pkid: VecDeque<Option<i64>>,
    /// Packet id to the seq of the row it carries, for publishes on the wire.
    inflight: HashMap<u16, Option<i64>>,
    /// Highest seq handed to rumqttc on this connection.
    pub(super) sent_up_to: i64,
}

impl Delivery {
    /// A publish was handed to rumqttc; `seq` when it carries a row.
    pub(super) fn sent(&mut self, seq: Option<i64>) {
        self.awaiting_pkid.push_back(seq);
        if let Some(seq) = seq {
            self.sent_up_to = self.sent_up_to.max(seq);
        }
    }

    /// The row `seq` was not published (it was set aside); reading goes on after it.
    pub(super) fn skipped(&mut self, seq: i64) {
        self.sent_up_to = self.sent_up_to.max(seq);
    }

    /// rumqttc wrote the next publish with packet id `pkid`.
    pub(super) fn assigned(&mut self, pkid: u16) {
        if let Some(seq) = self.awaiting_pkid.pop_front() {
            self.inflight.insert(pkid, seq);
        }
    }

    /// The broker acknowledged `pkid`: the seq of the row it carried, if any.
    pub(super) fn acknowledged(&mut self, pkid: u16) -> Option<i64> {
        self.inflight.remove(&pkid).flatten()
    }

    /// Publishes handed to rumqttc and not yet acknowledged.
    pub(super) fn unacknowledged(&self) -> usize {
        self.inflight.len() + self.awaiting_pkid.len()
    }
}

/// With `replay = "live_first"`: the rows that were buffered when the
/// connection came up, replayed oldest first whenever no live row waits,
/// at most `replay_rate` a second. Live rows are those after `end`.
#[derive(Debug)]
pub(super) struct Backlog {
    /// Rows up to this seq have been replayed (or were gone).
    pub(super) after: i64,
    /// The newest seq when the connection came up.
    pub(super) end: i64,
    /// Rows of the backlog not replayed yet: the buffer's rows when the
    /// connection came up, less those replayed since (rows the size limit
    /// drops meanwhile are not counted out).
    pub(super) rows_left: u64,
    pacer: Option<Pacer>,
}

/// A token bucket of one second's worth of rows.
#[derive(Debug)]
struct Pacer {
    per_second: f64,
    tokens: f64,
    filled_at: Instant,
}

impl Backlog {
    /// `per_second`: None for no cap.
    pub(super) fn new(end: i64, rows: u64, per_second: Option<f64>, now: Instant) -> Self {
        Self {
            after: 0,
            end,
            rows_left: rows,
            pacer: per_second.map(|per_second| Pacer {
                per_second,
                tokens: 1.0,
                filled_at: now,
            }),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.after >= self.end
    }

    /// How many rows may be read now, `room` at most; 0 when the cap
    /// holds them back until [`Self::ready_at`].
    pub(super) fn allowance(&mut self, room: usize, now: Instant) -> usize {
        match &mut self.pacer {
            None => room,
            Some(pacer) => {
                let elapsed = now.saturating_duration_since(pacer.filled_at);
                pacer.tokens = (pacer.tokens + elapsed.as_secs_f64() * pacer.per_second)
                    .min(pacer.per_second.max(1.0));
                pacer.filled_at = now;
                room.min(pacer.tokens as usize)
            }
        }
    }

    /// When the cap lets the next row go, if it holds one back now.
    pub(super) fn ready_at(&self) -> Option<Instant> {
        let pacer = self.pacer.as_ref()?;
        (pacer.tokens < 1.0).then(|| {
            pacer.filled_at + Duration::from_secs_f64((1.0 - pacer.tokens) / pacer.per_second)
        })
    }

    /// A read of `asked` rows after [`Self::after`] returned `seqs`: those
    /// up to `end` are replayed; fewer rows than asked, or one past `end`,
    /// means the backlog is through.
    pub(super) fn read(&mut self, asked: usize, seqs: impl IntoIterator<Item = i64>) {
        let mut returned = 0;
        for seq in seqs {
            returned += 1;
            if seq > self.end {
                self.after = self.end;
                break;
            }
            self.after = seq;
            self.rows_left = self.rows_left.saturating_sub(1);
            if let Some(pacer) = &mut self.pacer {
                pacer.tokens -= 1.0;
            }
        }
        if returned < asked {
            self.after = self.end;
        }
        if self.done() {
            self.rows_left = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_replayed_at_most_at_its_rate_and_ends_where_live_rows_begin() {
        let start = Instant::now();
        let mut backlog = Backlog::new(100, 90, Some(10.0), start);
        assert_eq!(backlog.allowance(64, start), 1, "one row at once");
        backlog.read(1, [3]);
        assert_eq!((backlog.after, backlog.rows_left), (3, 89));
        assert_eq!(backlog.allowance(64, start), 0, "then the cap holds");
        let ready = backlog.ready_at().expect("held back");
        assert_eq!(ready, start + Duration::from_millis(100));
        assert_eq!(backlog.allowance(64, ready), 1);
        backlog.read(1, [4]);
        let later = ready + Duration::from_secs(5);
        assert_eq!(backlog.allowance(64, later), 10, "a second's worth at most");
        assert_eq!(backlog.allowance(4, later), 4, "and no more than the room");
        backlog.read(10, [5, 6, 7, 99, 101]);
        assert!(backlog.done(), "a live row ends the backlog");
        assert_eq!((backlog.after, backlog.rows_left), (100, 0));

        let mut uncapped = Backlog::new(50, 10, None, start);
        assert_eq!(uncapped.allowance(64, start), 64);
        uncapped.read(64, [1, 2, 3]);
        assert!(uncapped.done(), "fewer rows than asked: nothing is left");
        assert_eq!(uncapped.ready_at(), None);
    }

    #[test]
    fn acks_map_to_the_rows_their_publish_carried() {
        let mut delivery = Delivery::default();
        delivery.sent(None); // status
        delivery.sent(Some(10));
        delivery.sent(Some(11));
        assert_eq!(
            delivery.unacknowledged(),
            3,
            "the status takes its place too"
        );
        for pkid in 1..=3 {
            delivery.assigned(pkid);
        }
        delivery.sent(None); // a write result between telemetry
        delivery.sent(Some(12));
        delivery.assigned(4);
        delivery.assigned(5);
        assert_eq!(delivery.sent_up_to, 12);
        assert_eq!(
            delivery.acknowledged(1),
            None,
            "the status publish carries no row"
        );
        assert_eq!(delivery.acknowledged(5), Some(12));
        assert_eq!(delivery.acknowledged(2), Some(10));
        assert_eq!(
            delivery.acknowledged(2),
            None,
            "a duplicate PUBACK acks nothing"
        );
        assert_eq!(delivery.acknowledged(4), None);
        assert_eq!(
            delivery.unacknowledged(),
            1,
            "row 11 still awaits its PUBACK"
        );
        assert_eq!(delivery.acknowledged(3), Some(11));
        assert_eq!(delivery.unacknowledged(), 0);
    }
}
