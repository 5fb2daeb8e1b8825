//! When each device on a link is served: earliest deadline first, the
//! line's silent interval, quarantine of devices that do not answer (probed
//! with growing back-off while the others keep their rate), polls missed
//! because the line is oversubscribed, and a link that is down and retried.
//!
//! Pure: it does no I/O and reads no clock; the bus task feeds it the
//! instants at which things happen, so every rule is tested without sockets
//! or sleeping.

use std::time::Duration;

use kite_core::Backoff;
use tokio::time::Instant;

/// Missed polls are reported at most this often per link.
pub const MISSED_POLL_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// One device's place in the schedule.
#[derive(Debug, Clone)]
struct Timing {
    interval: Duration,
    /// When the next poll (or, while quarantined, the next probe) is due.
    due: Instant,
    quarantine: Backoff,
    quarantined: bool,
    /// When its last poll started: of devices due at the same time, the one
    /// served longest ago goes first, so an oversubscribed line is shared.
    served_at: Option<Instant>,
}

/// What starting a poll found: polls that could not happen on time, and
/// whether to report them now (rate-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Missed {
    pub polls: u64,
    /// Missed polls not yet reported, when it is time to report them.
    pub report: Option<u64>,
}

/// A device that did not answer: when it is probed next, and whether it was
/// answering until now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub delay: Duration,
    pub newly_quarantined: bool,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    devices: Vec<Timing>,
    /// The line must stay silent until then before the next request.
    quiet_until: Instant,
    /// Set while the link is down: no attempt to reopen before then.
    link_retry_at: Option<Instant>,
    link_backoff: Backoff,
    missed_unreported: u64,
    missed_reported_at: Option<Instant>,
}

/// How a device that stopped answering is probed: from
/// `min(poll_interval, 1s)` up to `8 × poll_interval`, within 5 s to 60 s.
pub fn probe_backoff(poll_interval: Duration) -> Backoff {
    Backoff::new(
        poll_interval.min(Duration::from_secs(1)),
        (poll_interval * 8).clamp(Duration::from_secs(5), Duration::from_secs(60)),
    )
}

impl Schedule {
    /// Devices with these poll intervals, all due at `now`.
    pub fn new(intervals: &[Duration], now: Instant) -> Self {
        let shortest = intervals
            .iter()
            .copied()
            .min()
            .unwrap_or(Duration::from_secs(1));
        Self {
            devices: intervals
                .iter()
                .map(|&interval| Timing {
                    interval,
                    due: now,
                    quarantine: probe_backoff(interval),
                    quarantined: false,
                    served_at: None,
                })
                .collect(),
            quiet_until: now,
            link_retry_at: None,
            link_backoff: probe_backoff(shortest),
            missed_unreported: 0,
            missed_reported_at: None,
        }
    }

    /// The device to serve next (earliest deadline first) and when: not
    /// before the line is quiet, nor before the link may be retried.
    pub fn next(&self) -> (usize, Instant) {
        let (index, timing) = self
            .devices
            .iter()
            .enumerate()
            .min_by_key(|(_, timing)| (timing.due, timing.served_at))
            .expect("a link has at least one device");
        let mut at = timing.due.max(self.quiet_until);
        if let Some(retry) = self.link_retry_at {
            at = at.max(retry);
        }
        (index, at)
    }

    /// A poll of `index` starts at `now`: its deadline moves on by whole
    /// intervals, and the polls it could not start on time are counted.
    /// Probes, and polls while the link is down, are rescheduled by their
    /// outcome instead.
    pub fn poll_started(&mut self, index: usize, now: Instant) -> Missed {
        let link_down = self.link_retry_at.is_some();
        let timing = &mut self.devices[index];
        timing.served_at = Some(now);
        if timing.quarantined || link_down {
            timing.due = now + timing.interval;
            return Missed::default();
        }
        let late = now.saturating_duration_since(timing.due);
        let polls = (late.as_nanos() / timing.interval.as_nanos().max(1)) as u64;
        timing.due += timing.interval * u32::try_from(polls + 1).unwrap_or(u32::MAX);
        if polls == 0 {
            return Missed::default();
        }
        self.missed_unreported += polls;
        let report_due = self
            .missed_reported_at
            .is_none_or(|at| now.duration_since(at) >= MISSED_POLL_REPORT_INTERVAL);
        let report = report_due.then(|| {
            self.missed_reported_at = Some(now);
            std::mem::take(&mut self.missed_unreported)
        });
        Missed { polls, report }
    }

    /// `index` answered: it leaves quarantine; true if it was in it.
    pub fn answered(&mut self, index: usize) -> bool {
        let timing = &mut self.devices[index];
        timing.quarantine.reset();
        std::mem::replace(&mut timing.quarantined, false)
    }

    /// `index` did not answer (or answered garbage) at `now`: it is
    /// quarantined and probed after a growing delay.
    pub fn not_answering(&mut self, index: usize, now: Instant) -> Probe {
        let timing = &mut self.devices[index];
        let delay = timing.quarantine.next_delay();
        timing.due = now + delay;
        Probe {
            delay,
            newly_quarantined: !std::mem::replace(&mut timing.quarantined, true),
        }
    }

    pub fn is_quarantined(&self, index: usize) -> bool {
        self.devices[index].quarantined
    }

    /// The link failed at `now`: when it may be tried again.
    pub fn link_failed(&mut self, now: Instant) -> Duration {
        let delay = self.link_backoff.next_delay();
        self.link_retry_at = Some(now + delay);
        delay
    }

    /// The link opened at `now`; true if it was down. Polls that fell due
    /// while it was down were not missed for lack of line time: the
    /// devices start afresh, uncounted.
    pub fn link_opened(&mut self, now: Instant) -> bool {
        self.link_backoff.reset();
        let was_down = self.link_retry_at.take().is_some();
        if was_down {
            for timing in self.devices.iter_mut().filter(|t| !t.quarantined) {
                if now.saturating_duration_since(timing.due) >= timing.interval {
                    timing.due = now;
                }
            }
        }
        was_down
    }

    pub fn link_down(&self) -> bool {
        self.link_retry_at.is_some()
    }

    /// The line carried a frame until `now`: it must stay silent for `gap`.
    pub fn line_used(&mut self, now: Instant, gap: Duration) {
        self.quiet_until = now + gap;
    }

    /// When the next request may go out.
    pub fn quiet_until(&self) -> Instant {
        self.quiet_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How one device behaves on a simulated line.
    #[derive(Clone, Copy)]
    enum Device {
        /// Answers, taking this long.
        Answers(Duration),
        /// Never answers: costs its timeout.
        Silent(Duration),
    }

    /// What a run of the simulated line did.
    #[derive(Debug, Default)]
    struct Run {
        /// When each device's polls (or probes) started.
        polls: Vec<Vec<Instant>>,
        missed: u64,
        reports: Vec<(Instant, u64)>,
    }

    /// Serves `devices` on a line with silent interval `gap` for `length`
    /// of simulated time, exactly as the bus task does.
    fn simulate(devices: &[(Duration, Device)], gap: Duration, length: Duration) -> Run {
        let start = Instant::now();
        let intervals: Vec<Duration> = devices.iter().map(|(interval, _)| *interval).collect();
        let mut schedule = Schedule::new(&intervals, start);
        let mut run = Run {
            polls: vec![Vec::new(); devices.len()],
            ..Run::default()
        };
        let mut now = start;
        loop {
            let (index, at) = schedule.next();
            now = now.max(at);
            if now >= start + length {
                return run;
            }
            run.polls[index].push(now);
            let missed = schedule.poll_started(index, now);
            run.missed += missed.polls;
            if let Some(count) = missed.report {
                run.reports.push((now, count));
            }
            match devices[index].1 {
                Device::Answers(took) => {
                    now += took;
                    schedule.answered(index);
                }
                Device::Silent(timeout) => {
                    now += timeout;
                    schedule.not_answering(index, now);
                }
            }
            schedule.line_used(now, gap);
        }
    }

    fn gaps(polls: &[Instant]) -> Vec<Duration> {
        polls.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[test]
    fn devices_that_answer_keep_their_rate() {
        let run = simulate(
            &[
                (ms(100), Device::Answers(ms(5))),
                (ms(250), Device::Answers(ms(5))),
            ],
            ms(2),
            Duration::from_secs(10),
        );
        assert_eq!(run.missed, 0);
        assert_eq!(run.polls[0].len(), 100);
        assert_eq!(run.polls[1].len(), 40);
        assert!(gaps(&run.polls[0]).iter().all(|gap| *gap <= ms(110)));
    }

    #[test]
    fn a_silent_device_is_probed_with_growing_back_off_and_costs_one_timeout_per_probe() {
        let timeout = ms(500);
        let run = simulate(
            &[
                (ms(100), Device::Answers(ms(5))),
                (ms(100), Device::Silent(timeout)),
            ],
            Duration::ZERO,
            Duration::from_secs(120),
        );
        let probes = &run.polls[1];
        // From min(100 ms, 1 s) doubling up to 8 × 100 ms clamped to 5 s,
        // each delay in the upper half of its step, after the timeout.
        let mut step = ms(100);
        for gap in gaps(probes) {
            let delay = gap - timeout;
            assert!(
                delay >= step / 2 && delay <= step + ms(5),
                "{gap:?} for a step of {step:?}"
            );
            step = (step * 2).min(Duration::from_secs(5));
        }
        assert!(
            (24..=40).contains(&probes.len()),
            "{} probes in 120 s",
            probes.len()
        );
        // The live device lost at most the polls each probe's timeout covered.
        let live = run.polls[0].len() as u64;
        assert!(
            live + run.missed >= 1190,
            "{live} polls, {} missed",
            run.missed
        );
        assert!(
            run.missed <= probes.len() as u64 * 5,
            "{} missed for {} probes",
            run.missed,
            probes.len()
        );
    }

    #[test]
    fn an_oversubscribed_line_counts_missed_polls_reports_them_rarely_and_serves_everyone() {
        // Two devices asking 20 polls/s each from a line that carries 25.
        let run = simulate(
            &[
                (ms(50), Device::Answers(ms(40))),
                (ms(50), Device::Answers(ms(40))),
            ],
            Duration::ZERO,
            Duration::from_secs(180),
        );
        assert!(run.missed > 0);
        let (first, second) = (run.polls[0].len(), run.polls[1].len());
        assert!(
            first.abs_diff(second) <= 1,
            "earliest deadline first shares the line: {first} and {second}"
        );
        assert_eq!(run.reports.len(), 3, "once a minute: {:?}", run.reports);
        let reported: u64 = run.reports.iter().map(|(_, count)| count).sum();
        assert!(
            reported > 0 && reported <= run.missed,
            "{reported} of {}",
            run.missed
        );
        for pair in run.reports.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= MISSED_POLL_REPORT_INTERVAL);
        }
    }

    #[test]
    fn a_link_that_comes_back_does_not_count_its_downtime_as_missed_polls() {
        let start = Instant::now();
        let mut schedule = Schedule::new(&[ms(100), ms(100)], start);
        // The link fails on the first poll and stays down for 30 s of retries.
        let mut now = start;
        let mut retries = Vec::new();
        while now < start + Duration::from_secs(30) {
            let (index, at) = schedule.next();
            now = now.max(at);
            assert_eq!(schedule.poll_started(index, now), Missed::default());
            retries.push(now);
            schedule.link_failed(now);
            assert!(schedule.link_down());
        }
        // Retries back off (from 100 ms towards 5 s), never faster than the first step.
        assert!(gaps(&retries).iter().all(|gap| *gap >= ms(50)));
        assert!(retries.len() < 30, "{} attempts in 30 s", retries.len());
        // The next attempt opens the link: that device is polled at once,
        // the other is due at once too, and nothing counts as missed.
        let (index, at) = schedule.next();
        now = at;
        assert_eq!(schedule.poll_started(index, now), Missed::default());
        assert!(schedule.link_opened(now));
        assert!(!schedule.link_opened(now), "it was up already");
        let (other, at) = schedule.next();
        assert_ne!(other, index);
        assert_eq!(at, now);
        assert_eq!(schedule.poll_started(other, now), Missed::default());
        assert!(!schedule.link_down());
    }

    #[test]
    fn a_device_that_answers_again_leaves_quarantine() {
        let start = Instant::now();
        let mut schedule = Schedule::new(&[ms(200)], start);
        let probe = schedule.not_answering(0, start);
        assert!(probe.newly_quarantined);
        assert!(probe.delay >= ms(100) && probe.delay <= ms(200));
        assert!(!schedule.not_answering(0, start).newly_quarantined);
        assert!(schedule.is_quarantined(0));
        assert!(schedule.answered(0));
        assert!(!schedule.is_quarantined(0));
        assert!(!schedule.answered(0));
        // Back to the first step of back-off.
        let probe = schedule.not_answering(0, start);
        assert!(probe.delay <= ms(200), "{probe:?}");
    }
}
