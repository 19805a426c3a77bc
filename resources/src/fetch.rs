//! Which groups of a blob to ask which provider for: the sans-IO download
//! planner.
//!
//! A download keeps one bit per 16 KiB group: verified or not. Providers
//! pull work: whenever one has room, [`FetchPlan::next_range`] hands it the next
//! run of groups that nobody holds, sized to what that provider delivered so
//! far (a fast provider gets longer runs and comes back sooner, so it carries
//! more of the file). Each group is marked as it is verified, so progress,
//! resumption after a crash and a provider failing half-way all work at
//! group granularity. A provider that sends bad data is dropped and its
//! unfinished groups go back to the pool; one that fails repeatedly is
//! dropped too. When nothing is left to hand out, an idle provider may
//! duplicate the largest unfinished run of a slower one (the endgame), so the
//! last few groups do not wait on the slowest link.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use crate::blob::{GROUP_BYTES, group_bytes, group_count};

/// Names a provider within one download; the driver maps it to a peer.
pub type ProviderId = u32;

/// Shortest run handed out, in groups (256 KiB).
pub const MIN_SPAN: u64 = 16;
/// Longest run handed out, in groups (16 MiB).
pub const MAX_SPAN: u64 = 1024;
/// A provider's first run, before its speed is known (1 MiB).
pub const FIRST_SPAN: u64 = 64;
/// A run should take about this long at the provider's measured rate.
const TARGET_RUN: Duration = Duration::from_millis(250);
/// Failures (not bad data) after which a provider is dropped.
pub const MAX_FAILURES: u32 = 3;

/// Why a run did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The provider could not be reached or the stream broke.
    Unreachable,
    /// The provider does not have the blob.
    NotFound,
    /// The provider sent bytes that do not verify against the id.
    BadData,
}

#[derive(Clone, Debug, Default)]
struct Provider {
    /// The peer behind it: several streams to one peer share one link, so
    /// one never takes over another's run in the endgame.
    owner: ProviderId,
    /// Bytes per second, smoothed over completed runs; 0 until one completes.
    rate: f64,
    failures: u32,
    dropped: Option<Failure>,
    delivered: u64,
}

#[derive(Clone, Debug)]
struct InFlight {
    provider: ProviderId,
    range: Range<u64>,
}

/// One download's plan.
#[derive(Clone, Debug)]
pub struct FetchPlan {
    size: u64,
    groups: u64,
    have: Vec<u64>,
    have_count: u64,
    /// Groups handed out and not yet verified (a group may be handed out
    /// twice in the endgame).
    requested: Vec<u64>,
    in_flight: Vec<InFlight>,
    providers: BTreeMap<ProviderId, Provider>,
}

fn bit(words: &[u64], i: u64) -> bool {
    words.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set(words: &mut [u64], i: u64, on: bool) {
    if let Some(w) = words.get_mut((i / 64) as usize) {
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
}

impl FetchPlan {
    /// A download of a blob of `size` bytes; `have` is the bitmap of groups
    /// already verified by an earlier, interrupted run (ignored if its length
    /// does not fit).
    pub fn new(size: u64, have: Option<Vec<u64>>) -> Self {
        let groups = group_count(size);
        let words = groups.div_ceil(64) as usize;
        let mut have = have.filter(|h| h.len() == words).unwrap_or_else(|| vec![0; words]);
        // Bits past the last group mean nothing.
        if !groups.is_multiple_of(64)
            && let Some(last) = have.last_mut()
        {
            *last &= (1u64 << (groups % 64)) - 1;
        }
        let have_count = have.iter().map(|w| u64::from(w.count_ones())).sum();
        FetchPlan {
            size,
            groups,
            have,
            have_count,
            requested: vec![0; words],
            in_flight: Vec::new(),
            providers: BTreeMap::new(),
        }
    }

    /// Blob size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The verified-groups bitmap (what to save for resuming).
    pub fn have(&self) -> &[u64] {
        &self.have
    }

    /// Whether group `group` is verified.
    pub fn has(&self, group: u64) -> bool {
        bit(&self.have, group)
    }

    /// Bytes verified so far.
    pub fn verified_bytes(&self) -> u64 {
        if self.have_count == self.groups {
            return self.size;
        }
        self.have_count * GROUP_BYTES
    }

    /// Every group is verified.
    pub fn is_complete(&self) -> bool {
        self.have_count == self.groups
    }

    /// Adds a provider (again: a dropped one stays dropped).
    pub fn add_provider(&mut self, id: ProviderId) {
        self.add_stream(id, id);
    }

    /// Adds stream `id` to the peer `owner` (streams of one peer pull runs
    /// side by side, but share its link: the endgame never duplicates a
    /// run on the same peer).
    pub fn add_stream(&mut self, id: ProviderId, owner: ProviderId) {
        self.providers.entry(id).or_insert_with(|| Provider {
            owner,
            ..Provider::default()
        });
    }

    /// Providers not dropped.
    pub fn live_providers(&self) -> usize {
        self.providers.values().filter(|p| p.dropped.is_none()).count()
    }

    /// Why a provider was dropped, if it was.
    pub fn dropped(&self, id: ProviderId) -> Option<Failure> {
        self.providers.get(&id).and_then(|p| p.dropped)
    }

    /// Bytes each provider delivered (verified), by provider.
    pub fn delivered(&self) -> impl Iterator<Item = (ProviderId, u64)> + '_ {
        self.providers.iter().map(|(id, p)| (*id, p.delivered))
    }

    /// Runs `provider` has in flight.
    pub fn in_flight(&self, provider: ProviderId) -> usize {
        self.in_flight.iter().filter(|f| f.provider == provider).count()
    }

    /// The next run of groups for `provider` to send, or `None` if there is
    /// nothing for it (done, dropped, or only the endgame is left and it is
    /// busy).
    pub fn next_range(&mut self, provider: ProviderId) -> Option<Range<u64>> {
        let p = self.providers.get(&provider)?;
        if p.dropped.is_some() || self.is_complete() {
            return None;
        }
        let owner = p.owner;
        let span = if p.rate > 0.0 {
            ((p.rate * TARGET_RUN.as_secs_f64()) / GROUP_BYTES as f64) as u64
        } else {
            FIRST_SPAN
        }
        .clamp(MIN_SPAN, MAX_SPAN)
        // No stream takes more than its share of what is left, so the
        // others have work too and none is left only the endgame.
        .min(
            self.unclaimed()
                .div_ceil(self.live_providers().max(1) as u64)
                .max(MIN_SPAN),
        );
        if let Some(start) = self.first_free() {
            let mut end = start + 1;
            while end < self.groups && end - start < span && !bit(&self.have, end) && !bit(&self.requested, end) {
                end += 1;
            }
            return Some(self.hand_out(provider, start..end));
        }
        // Endgame: only when idle, take over the unfinished part of the
        // largest run someone else holds.
        if self.in_flight(provider) > 0 {
            return None;
        }
        let (range, _) = self
            .in_flight
            .iter()
            .filter(|f| self.providers.get(&f.provider).is_some_and(|p| p.owner != owner))
            .map(|f| {
                let missing = f.range.clone().filter(|g| !bit(&self.have, *g)).count();
                (f.range.clone(), missing)
            })
            .filter(|(_, missing)| *missing > 0)
            .max_by_key(|(r, missing)| (*missing, std::cmp::Reverse(r.start)))?;
        let start = range.clone().find(|g| !bit(&self.have, *g))?;
        Some(self.hand_out(provider, start..range.end))
    }

    fn hand_out(&mut self, provider: ProviderId, range: Range<u64>) -> Range<u64> {
        for g in range.clone() {
            set(&mut self.requested, g, true);
        }
        self.in_flight.push(InFlight {
            provider,
            range: range.clone(),
        });
        range
    }

    /// Groups neither verified nor handed out.
    fn unclaimed(&self) -> u64 {
        let claimed: u64 = self
            .have
            .iter()
            .zip(&self.requested)
            .map(|(h, r)| u64::from((h | r).count_ones()))
            .sum();
        self.groups.saturating_sub(claimed)
    }

    fn first_free(&self) -> Option<u64> {
        for (i, (h, r)) in self.have.iter().zip(&self.requested).enumerate() {
            let free = !(h | r);
            if free != 0 {
                let g = i as u64 * 64 + u64::from(free.trailing_zeros());
                return (g < self.groups).then_some(g);
            }
        }
        None
    }

    /// Group `group` arrived from `provider` and verified. Returns whether
    /// it was new.
    pub fn verified(&mut self, provider: ProviderId, group: u64) -> bool {
        if group >= self.groups || bit(&self.have, group) {
            return false;
        }
        set(&mut self.have, group, true);
        self.have_count += 1;
        if let Some(p) = self.providers.get_mut(&provider) {
            p.delivered += group_bytes(&(group..group + 1), self.size);
        }
        true
    }

    /// `provider` finished the run `range` after `elapsed`: its speed is
    /// updated. Groups of the run that did not verify go back to the pool.
    pub fn finished(&mut self, provider: ProviderId, range: Range<u64>, elapsed: Duration) {
        if !self.take_in_flight(provider, &range) {
            return;
        }
        let bytes = group_bytes(&range, self.size) as f64;
        if let Some(p) = self.providers.get_mut(&provider) {
            let sample = bytes / elapsed.as_secs_f64().max(1e-6);
            p.rate = if p.rate == 0.0 {
                sample
            } else {
                0.5 * p.rate + 0.5 * sample
            };
            p.failures = 0;
        }
    }

    /// `provider` could not complete `range`: its unverified groups go back
    /// to the pool; bad data or repeated failures drop the provider (and
    /// return all its runs).
    pub fn failed(&mut self, provider: ProviderId, range: Range<u64>, why: Failure) {
        self.take_in_flight(provider, &range);
        let Some(p) = self.providers.get_mut(&provider) else {
            return;
        };
        p.failures += 1;
        let drop = match why {
            Failure::BadData | Failure::NotFound => true,
            Failure::Unreachable => p.failures >= MAX_FAILURES,
        };
        if drop && p.dropped.is_none() {
            p.dropped = Some(why);
            let runs: Vec<Range<u64>> = self
                .in_flight
                .iter()
                .filter(|f| f.provider == provider)
                .map(|f| f.range.clone())
                .collect();
            for run in runs {
                self.take_in_flight(provider, &run);
            }
        }
    }

    /// Removes one in-flight entry and releases its groups that no other
    /// run still covers.
    fn take_in_flight(&mut self, provider: ProviderId, range: &Range<u64>) -> bool {
        let Some(pos) = self
            .in_flight
            .iter()
            .position(|f| f.provider == provider && f.range == *range)
        else {
            return false;
        };
        self.in_flight.swap_remove(pos);
        for g in range.clone() {
            let still = self.in_flight.iter().any(|f| f.range.contains(&g));
            if !still {
                set(&mut self.requested, g, false);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Plays a download against providers with the given speeds (bytes per
    /// virtual second) and a set of liars; returns the plan at the end.
    fn simulate(size: u64, speeds: &[f64], liars: &[ProviderId]) -> FetchPlan {
        let mut fetch = FetchPlan::new(size, None);
        for id in 0..speeds.len() as u32 {
            fetch.add_provider(id);
        }
        // (finish time, provider, range)
        let mut clock = 0.0f64;
        let mut busy: Vec<(f64, ProviderId, Range<u64>)> = Vec::new();
        for _ in 0..100_000 {
            for id in 0..speeds.len() as u32 {
                if fetch.in_flight(id) == 0
                    && let Some(range) = fetch.next_range(id)
                {
                    let secs = group_bytes(&range, size) as f64 / speeds[id as usize];
                    busy.push((clock + secs, id, range));
                }
            }
            if fetch.is_complete() || busy.is_empty() {
                break;
            }
            busy.sort_by(|a, b| b.0.total_cmp(&a.0));
            let Some((t, id, range)) = busy.pop() else { break };
            let elapsed = Duration::from_secs_f64((t - clock).max(1e-9));
            clock = t;
            if liars.contains(&id) {
                fetch.failed(id, range, Failure::BadData);
            } else {
                for g in range.clone() {
                    fetch.verified(id, g);
                }
                fetch.finished(id, range, elapsed);
            }
        }
        fetch
    }

    #[test]
    fn faster_providers_carry_more_and_everything_arrives() {
        let fetch = simulate(
            256 * MIB,
            &[100.0 * MIB as f64, 50.0 * MIB as f64, 25.0 * MIB as f64],
            &[],
        );
        assert!(fetch.is_complete());
        assert_eq!(fetch.verified_bytes(), 256 * MIB);
        let delivered: Vec<u64> = fetch.delivered().map(|(_, b)| b).collect();
        assert!(
            delivered[0] > delivered[1] && delivered[1] > delivered[2],
            "{delivered:?}"
        );
        // Roughly in proportion to speed (4:2:1 of 7 parts).
        let share = delivered[0] as f64 / (256 * MIB) as f64;
        assert!((0.45..0.7).contains(&share), "fastest carried {share}");
    }

    #[test]
    fn a_liar_is_dropped_and_its_groups_come_from_the_others() {
        let fetch = simulate(
            64 * MIB + 123,
            &[80.0 * MIB as f64, 40.0 * MIB as f64, 200.0 * MIB as f64],
            &[2],
        );
        assert!(fetch.is_complete());
        assert_eq!(fetch.dropped(2), Some(Failure::BadData));
        assert_eq!(fetch.delivered().find(|(id, _)| *id == 2).map(|(_, b)| b), Some(0));
        assert_eq!(fetch.live_providers(), 2);
    }

    #[test]
    fn only_liars_means_no_progress_and_no_work() {
        let mut fetch = simulate(10 * MIB, &[10.0 * MIB as f64], &[0]);
        assert!(!fetch.is_complete());
        assert_eq!(fetch.next_range(0), None);
        assert_eq!(fetch.live_providers(), 0);
    }

    #[test]
    fn a_resumed_download_asks_only_for_what_is_missing() {
        let size = 100 * GROUP_BYTES + 7;
        let mut first = FetchPlan::new(size, None);
        first.add_provider(0);
        let range = first.next_range(0).unwrap();
        for g in range.clone().take(10) {
            first.verified(0, g);
        }
        // Crash: the bitmap survives, the in-flight runs do not.
        let mut again = FetchPlan::new(size, Some(first.have().to_vec()));
        again.add_provider(0);
        assert_eq!(again.verified_bytes(), 10 * GROUP_BYTES);
        let mut asked = Vec::new();
        while let Some(r) = again.next_range(0) {
            for g in r.clone() {
                again.verified(0, g);
            }
            again.finished(0, r.clone(), Duration::from_millis(10));
            asked.push(r);
        }
        assert!(again.is_complete());
        assert_eq!(asked.first().map(|r| r.start), Some(10));
        assert_eq!(asked.iter().map(|r| r.end - r.start).sum::<u64>(), 91);
    }

    #[test]
    fn unreachable_providers_get_retries_then_are_dropped() {
        let mut fetch = FetchPlan::new(10 * MIB, None);
        fetch.add_provider(0);
        for _ in 0..MAX_FAILURES {
            let r = fetch.next_range(0).unwrap();
            fetch.failed(0, r, Failure::Unreachable);
        }
        assert_eq!(fetch.dropped(0), Some(Failure::Unreachable));
        assert_eq!(fetch.next_range(0), None);
        // Its groups are free again for someone else.
        fetch.add_provider(1);
        assert_eq!(fetch.next_range(1).map(|r| r.start), Some(0));
    }

    #[test]
    fn streams_of_one_peer_never_duplicate_each_other_in_the_endgame() {
        let mut fetch = FetchPlan::new(8 * MIB, None);
        fetch.add_stream(0, 7);
        fetch.add_stream(1, 7);
        let first = fetch.next_range(0).unwrap();
        let second = fetch.next_range(1).unwrap();
        for g in first.clone() {
            fetch.verified(0, g);
        }
        // Fast: the next run would be 1024 groups, all that is left.
        fetch.finished(0, first, Duration::from_millis(1));
        let third = fetch.next_range(0).unwrap();
        assert!(third.end < fetch.groups, "one stream took all the rest: {third:?}");
        for g in second.clone() {
            fetch.verified(1, g);
        }
        fetch.finished(1, second, Duration::from_millis(1));
        // Stream 1 takes what is left; then, idle, it does not take over
        // stream 0's run on the same peer (another peer's stream would).
        while let Some(r) = fetch.next_range(1) {
            assert!(r.start >= third.end, "duplicated part of {third:?}: {r:?}");
            for g in r.clone() {
                fetch.verified(1, g);
            }
            fetch.finished(1, r, Duration::from_millis(1));
        }
        assert!(!fetch.is_complete(), "stream 0's run is still its own");
        fetch.add_stream(2, 8);
        let taken = fetch.next_range(2).unwrap();
        assert!(third.contains(&taken.start), "{taken:?} {third:?}");
    }

    #[test]
    fn an_empty_blob_is_complete_at_once() {
        let mut fetch = FetchPlan::new(0, None);
        fetch.add_provider(0);
        assert!(fetch.is_complete());
        assert_eq!(fetch.next_range(0), None);
    }

    /// Hands `provider` its next run and completes it in `elapsed`.
    fn complete_run(fetch: &mut FetchPlan, provider: ProviderId, elapsed: Duration) -> Range<u64> {
        let range = fetch.next_range(provider).unwrap();
        for g in range.clone() {
            fetch.verified(provider, g);
        }
        fetch.finished(provider, range.clone(), elapsed);
        range
    }

    #[test]
    fn the_plan_knows_its_size_and_counts_verified_bytes_with_a_short_last_group() {
        let size = 3 * GROUP_BYTES + 100;
        let mut fetch = FetchPlan::new(size, None);
        assert_eq!(fetch.size(), size);
        fetch.add_provider(0);
        assert!(fetch.verified(0, 3), "the short last group");
        assert_eq!(
            fetch.verified_bytes(),
            GROUP_BYTES,
            "counted as a whole group until done"
        );
        assert!(!fetch.verified(0, 3), "a group already verified is not new");
        assert!(!fetch.verified(0, 4), "a group past the end");
        assert_eq!(fetch.delivered().collect::<Vec<_>>(), vec![(0, 100)]);
        for g in 0..3 {
            assert!(fetch.verified(0, g));
        }
        assert!(fetch.is_complete());
        assert_eq!(fetch.verified_bytes(), size);
        assert_eq!(fetch.delivered().collect::<Vec<_>>(), vec![(0, size)]);
    }

    #[test]
    fn the_resume_bitmap_holds_every_group_across_words_and_drops_bits_past_the_end() {
        // 130 groups: three words, the last one two bits long.
        let size = 130 * GROUP_BYTES;
        let verified = [0u64, 1, 63, 64, 65, 127, 128, 129];
        let mut first = FetchPlan::new(size, None);
        for g in verified {
            first.verified(0, g);
        }
        for g in 0..130 {
            assert_eq!(first.has(g), verified.contains(&g), "group {g}");
        }
        assert!(!first.has(130) && !first.has(10_000), "past the end");
        // Saved and read back, with garbage in the bits past the last group.
        let mut saved = first.have().to_vec();
        assert_eq!(saved.len(), 3);
        saved[2] |= !0b11;
        let again = FetchPlan::new(size, Some(saved));
        assert_eq!(again.verified_bytes(), verified.len() as u64 * GROUP_BYTES);
        for g in 0..130 {
            assert_eq!(again.has(g), verified.contains(&g), "group {g} after resume");
        }
        // A bitmap of the wrong length is someone else's: ignored.
        let wrong = FetchPlan::new(size, Some(vec![!0; 2]));
        assert_eq!(wrong.verified_bytes(), 0);
        // A blob of exactly 64 groups keeps its whole last word.
        let exact = FetchPlan::new(64 * GROUP_BYTES, Some(vec![!0]));
        assert!(exact.is_complete());
    }

    #[test]
    fn a_run_lasts_about_a_quarter_second_at_the_measured_rate() {
        let mut fetch = FetchPlan::new(1024 * MIB, None);
        fetch.add_provider(0);
        let first = complete_run(&mut fetch, 0, Duration::from_millis(250));
        assert_eq!(first.end - first.start, FIRST_SPAN, "before any rate is known");
        // 1 MiB in 250 ms is 4 MiB/s: the next run is 1 MiB again.
        let second = complete_run(&mut fetch, 0, Duration::from_millis(125));
        assert_eq!(second.end - second.start, 64);
        // Smoothed: (4 + 8) / 2 = 6 MiB/s, 1.5 MiB per 250 ms = 96 groups.
        let third = fetch.next_range(0).unwrap();
        assert_eq!(third.end - third.start, 96);
        // Clamped at both ends.
        for (elapsed, span) in [
            (Duration::from_secs(1000), MIN_SPAN),
            (Duration::from_micros(1), MAX_SPAN),
        ] {
            let mut fetch = FetchPlan::new(1024 * MIB, None);
            fetch.add_provider(0);
            complete_run(&mut fetch, 0, elapsed);
            let next = fetch.next_range(0).unwrap();
            assert_eq!(next.end - next.start, span, "after a run of {elapsed:?}");
        }
        // The end of a run the plan never handed out is ignored.
        fetch.finished(0, 5000..5001, Duration::from_secs(1000));
        assert_eq!(fetch.next_range(0).map(|r| r.end - r.start), Some(96));
    }

    #[test]
    fn no_stream_takes_more_than_its_share_of_what_is_left() {
        // 320 groups, two providers: each first run is at most 160 groups,
        // but never less than MIN_SPAN.
        let mut fetch = FetchPlan::new(320 * GROUP_BYTES, None);
        fetch.add_provider(0);
        fetch.add_provider(1);
        complete_run(&mut fetch, 0, Duration::from_micros(1));
        let r = fetch.next_range(0).unwrap();
        // 256 left for two providers: 128 each.
        assert_eq!(r.end - r.start, 128);
        let mut tiny = FetchPlan::new(20 * GROUP_BYTES, None);
        for id in 0..4 {
            tiny.add_provider(id);
        }
        assert_eq!(tiny.next_range(0), Some(0..16), "at least MIN_SPAN");
    }

    #[test]
    fn a_success_forgives_earlier_failures_and_a_provider_without_the_blob_is_dropped_at_once() {
        let mut fetch = FetchPlan::new(64 * MIB, None);
        fetch.add_provider(0);
        for _ in 0..MAX_FAILURES - 1 {
            let r = fetch.next_range(0).unwrap();
            fetch.failed(0, r, Failure::Unreachable);
        }
        complete_run(&mut fetch, 0, Duration::from_millis(100));
        for _ in 0..MAX_FAILURES - 1 {
            let r = fetch.next_range(0).unwrap();
            fetch.failed(0, r, Failure::Unreachable);
        }
        assert_eq!(fetch.dropped(0), None, "failures in a row count, not in all");
        fetch.add_provider(1);
        let r = fetch.next_range(1).unwrap();
        fetch.failed(1, r, Failure::NotFound);
        assert_eq!(fetch.dropped(1), Some(Failure::NotFound));
        assert_eq!(fetch.live_providers(), 1);
        // A failure for a provider never added changes nothing.
        fetch.failed(9, 0..1, Failure::BadData);
        assert_eq!(fetch.live_providers(), 1);
    }

    #[test]
    fn the_endgame_takes_the_largest_unfinished_run_and_its_groups_stay_claimed_until_both_end() {
        let mut fetch = FetchPlan::new(200 * GROUP_BYTES, None);
        for id in 0..3 {
            fetch.add_provider(id);
        }
        let a = fetch.next_range(0).unwrap();
        let b = fetch.next_range(1).unwrap();
        let c = fetch.next_range(2).unwrap();
        assert!(a.end == b.start && b.end == c.start, "{a:?} {b:?} {c:?}");
        // Provider 2 finishes its run and everything else nobody holds;
        // provider 0 verified all but 10 groups of its run, provider 1 none.
        for g in c.clone() {
            fetch.verified(2, g);
        }
        fetch.finished(2, c, Duration::from_millis(10));
        while fetch.first_free().is_some() {
            complete_run(&mut fetch, 2, Duration::from_millis(10));
        }
        for g in a.start..a.end - 10 {
            fetch.verified(0, g);
        }
        assert!(b.end - b.start > 10);
        // Idle, provider 2 duplicates the largest unfinished run: b.
        let dup = fetch.next_range(2).unwrap();
        assert_eq!(dup, b);
        // Provider 0 is not idle: no duplicate for it.
        assert_eq!(fetch.next_range(0), None);
        // Provider 1 fails: its groups stay claimed by the duplicate, so
        // nobody is handed them as free.
        fetch.failed(1, b.clone(), Failure::Unreachable);
        assert_eq!(fetch.unclaimed(), 0);
        assert_eq!(fetch.first_free(), None);
        // Once the duplicate ends too, the groups it did not verify are free.
        for g in b.start..b.start + 5 {
            fetch.verified(2, g);
        }
        fetch.failed(2, dup, Failure::Unreachable);
        assert_eq!(fetch.first_free(), Some(b.start + 5));
    }

    #[test]
    fn a_run_never_reaches_past_the_last_group() {
        // Fewer groups than the shortest run: the run is the whole blob.
        let mut fetch = FetchPlan::new(10 * GROUP_BYTES, None);
        fetch.add_provider(0);
        assert_eq!(fetch.next_range(0), Some(0..10));
    }

    #[test]
    fn a_dropped_provider_returns_every_run_it_held() {
        let mut fetch = FetchPlan::new(1024 * GROUP_BYTES, None);
        fetch.add_provider(0);
        fetch.add_provider(1);
        let first = fetch.next_range(0).unwrap();
        let second = fetch.next_range(0).unwrap();
        let other = fetch.next_range(1).unwrap();
        fetch.failed(0, first.clone(), Failure::BadData);
        assert_eq!(fetch.in_flight(0), 0);
        assert_eq!(fetch.in_flight(1), 1, "another provider's run stays");
        assert_eq!(fetch.first_free(), Some(first.start));
        assert_eq!(fetch.unclaimed(), 1024 - (other.end - other.start));
        assert!(second.end <= other.start || second.start >= other.end);
    }
}
