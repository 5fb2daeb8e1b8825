//! Which buffered row each publish of one connection carries, so that a row
//! is deleted only on the PUBACK of its own publish. Pure: the connection
//! loop feeds it rumqttc's events, and it is tested without a broker.

use std::collections::{HashMap, VecDeque};

/// Which buffered row each publish of one connection carries. Pure state:
/// the connection loop feeds it rumqttc's events.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// One entry per publish handed to rumqttc, in order: the row's seq for
    /// telemetry, `None` for status and results. rumqttc reports each
    /// publish's packet id in the same order.
    awaiting_pkid: VecDeque<Option<i64>>,
    /// Telemetry entries in `awaiting_pkid`.
    unassigned: usize,
    /// Packet id to seq, for telemetry on the wire.
    inflight: HashMap<u16, i64>,
    /// Highest seq handed to rumqttc on this connection.
    pub(super) sent_up_to: i64,
}

impl Delivery {
    /// A publish was handed to rumqttc; `seq` when it carries a row.
    pub(super) fn sent(&mut self, seq: Option<i64>) {
        self.awaiting_pkid.push_back(seq);
        if let Some(seq) = seq {
            self.unassigned += 1;
            self.sent_up_to = self.sent_up_to.max(seq);
        }
    }

    /// The row `seq` was not published (it was set aside); reading goes on after it.
    pub(super) fn skipped(&mut self, seq: i64) {
        self.sent_up_to = self.sent_up_to.max(seq);
    }

    /// rumqttc wrote the next publish with packet id `pkid`.
    pub(super) fn assigned(&mut self, pkid: u16) {
        if let Some(Some(seq)) = self.awaiting_pkid.pop_front() {
            self.unassigned -= 1;
            self.inflight.insert(pkid, seq);
        }
    }

    /// The broker acknowledged `pkid`: the seq of the row it carried, if any.
    pub(super) fn acknowledged(&mut self, pkid: u16) -> Option<i64> {
        self.inflight.remove(&pkid)
    }

    /// Rows handed to rumqttc and not yet acknowledged.
    pub(super) fn unacknowledged(&self) -> usize {
        self.inflight.len() + self.unassigned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_map_to_the_rows_their_publish_carried() {
        let mut delivery = Delivery::default();
        delivery.sent(None); // status
        delivery.sent(Some(10));
        delivery.sent(Some(11));
        assert_eq!(delivery.unacknowledged(), 2);
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
