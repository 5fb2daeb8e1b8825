//! Matching what runs against what a new config wants, by name: the one
//! rule behind applying a config to links and to plug-ins alike.

use std::collections::HashMap;
use std::hash::Hash;

/// What becomes of a running item or a wanted one.
#[derive(Debug, PartialEq)]
pub(super) enum Step<R, W> {
    /// Running with the same settings: left alone.
    Keep(R),
    /// Running, and wanted with other settings.
    Change(R, W),
    /// Wanted, not running.
    Start(W),
    /// Running, no longer wanted.
    Stop(R),
}

/// The steps that bring `running` in line with `wanted`, matched by key:
/// one per wanted item in its order, then one per item no longer wanted,
/// in the order they were running.
pub(super) fn reconcile<R, W, K: Eq + Hash>(
    running: Vec<R>,
    wanted: Vec<W>,
    running_key: impl Fn(&R) -> K,
    wanted_key: impl Fn(&W) -> K,
    same: impl Fn(&R, &W) -> bool,
) -> Vec<Step<R, W>> {
    let mut by_key: HashMap<K, (usize, R)> = running
        .into_iter()
        .enumerate()
        .map(|(i, item)| (running_key(&item), (i, item)))
        .collect();
    let mut steps: Vec<Step<R, W>> = wanted
        .into_iter()
        .map(|want| match by_key.remove(&wanted_key(&want)) {
            Some((_, item)) if same(&item, &want) => Step::Keep(item),
            Some((_, item)) => Step::Change(item, want),
            None => Step::Start(want),
        })
        .collect();
    let mut gone: Vec<(usize, R)> = by_key.into_values().collect();
    gone.sort_by_key(|(i, _)| *i);
    steps.extend(gone.into_iter().map(|(_, item)| Step::Stop(item)));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, settings) pairs.
    fn check(running: &[(&str, u8)], wanted: &[(&str, u8)], expected: &[&str]) {
        let steps = reconcile(
            running.to_vec(),
            wanted.to_vec(),
            |r| r.0,
            |w| w.0,
            |r, w| r.1 == w.1,
        );
        let described: Vec<String> = steps
            .iter()
            .map(|step| match step {
                Step::Keep(r) => format!("keep {}", r.0),
                Step::Change(r, w) => format!("change {} {}>{}", r.0, r.1, w.1),
                Step::Start(w) => format!("start {}", w.0),
                Step::Stop(r) => format!("stop {}", r.0),
            })
            .collect();
        assert_eq!(described, expected);
    }

    #[test]
    fn steps_follow_the_wanted_order_then_what_goes() {
        check(&[], &[("a", 1)], &["start a"]);
        check(&[("a", 1)], &[("a", 1)], &["keep a"]);
        check(&[("a", 1)], &[("a", 2)], &["change a 1>2"]);
        check(&[("a", 1), ("b", 1)], &[], &["stop a", "stop b"]);
        check(
            &[("c", 1), ("a", 1), ("b", 1), ("d", 1)],
            &[("b", 2), ("e", 1), ("a", 1)],
            &["change b 1>2", "start e", "keep a", "stop c", "stop d"],
        );
    }
}
