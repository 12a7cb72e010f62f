//! The acknowledgement ledger: which WAL position may be reported to PostgreSQL as flushed.
//!
//! Pure: no I/O, no clock, no tasks. The delivery loop (`outbox`) tells it what happened to
//! each sealed object — recorded, stored on a provider, a write to a provider failed, written
//! to the fsync'd outbox — and asks it what to do next: which objects to spool, which to
//! forget, and the position that may now be acknowledged. The loop does the I/O.
//!
//! Objects are recorded in the order they were handed to the providers, each with a sequence
//! number (strictly increasing, not necessarily consecutive: replayed outbox files may have
//! gaps) and the position it makes durable, if any (`None`: a timeline history file or an
//! object replayed from the outbox, which acknowledge nothing by themselves). Object `O`
//! covers the WAL from the end of the last object recorded before it with an end, up to its
//! own end. Positions are `(timeline, LSN)` and compare in that order, never by LSN alone.
//!
//! Rules:
//! - A provider is down from a failed write until every write that failed on it has since
//!   succeeded: one object that keeps failing keeps it down even while other writes to it
//!   succeed, so it does not flap (and objects stay spooled for it meanwhile).
//! - An object *counts* once, for every provider, it is stored there, or the provider is down
//!   and the object is in the fsync'd outbox (the documented default policy: the spool stands
//!   in for a provider that is down, not for one that is merely slow).
//! - Objects are acknowledged in recording order: the first object that does not count stops
//!   the scan, however many after it do.
//!
//! Invariants (property-tested below):
//! - [`Ledger::acknowledge`] never answers a position behind (or equal to) one it answered
//!   before: the acknowledged position only moves forward.
//! - Every object recorded up to the one whose end is acknowledged is, for every provider,
//!   stored there or in the outbox; when it was acknowledged, each provider that lacked it
//!   was down. [`Ledger::forget`] hands back only acknowledged objects that every provider
//!   stores, so an outbox file is never deleted while a provider still lacks it.
//! - A timeline is seen closed when an object on a later timeline is recorded (objects come
//!   in order, so every object of the earlier one was recorded before). The answer moves onto
//!   a timeline only once every object recorded before that timeline's first object counts:
//!   it never leaves an unstored tail of the timeline it leaves behind.

use std::collections::{BTreeSet, VecDeque};

use crate::core::wal::{Lsn, TimelineId};

/// A WAL position on a timeline: ordered by timeline, then LSN.
pub type Position = (TimelineId, Lsn);

/// What a successful write changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    /// The provider was down and has no failing write left: it is up again.
    pub back_up: bool,
    /// The object is now stored on every provider: nobody needs its bytes any more.
    pub everywhere: bool,
}

#[derive(Debug)]
struct Object {
    seq: u64,
    end: Option<Position>,
    stored: Vec<bool>,
    spooled: bool,
}

impl Object {
    fn everywhere(&self) -> bool {
        self.stored.iter().all(|s| *s)
    }
}

/// Delivery state of the objects not yet stored on every provider, and of the providers.
#[derive(Debug)]
pub struct Ledger {
    providers: usize,
    /// Recorded, not yet forgotten, in recording (sequence) order.
    objects: VecDeque<Object>,
    /// Per provider: the objects whose last write to it failed.
    failing: Vec<BTreeSet<u64>>,
    down: Vec<bool>,
    last_seq: Option<u64>,
    /// The newest object acknowledged (whether or not it had an end).
    acked_seq: Option<u64>,
    /// The last position answered by `acknowledge`.
    acked: Option<Position>,
}

impl Ledger {
    /// A ledger for `providers` providers, all up, with nothing recorded.
    pub fn new(providers: usize) -> Ledger {
        Ledger {
            providers,
            objects: VecDeque::new(),
            failing: vec![BTreeSet::new(); providers],
            down: vec![false; providers],
            last_seq: None,
            acked_seq: None,
            acked: None,
        }
    }

    /// Object `seq` making `end` durable was handed to every provider; `spooled`: it is in
    /// the fsync'd outbox already. Sequence numbers must increase.
    pub fn record(&mut self, seq: u64, end: Option<Position>, spooled: bool) {
        assert!(
            self.last_seq.map_or(true, |s| seq > s),
            "objects are recorded in sequence order"
        );
        self.last_seq = Some(seq);
        self.objects.push_back(Object {
            seq,
            end,
            stored: vec![false; self.providers],
            spooled,
        });
    }

    /// Provider `provider` stored object `seq`.
    pub fn stored(&mut self, provider: usize, seq: u64) -> Stored {
        self.failing[provider].remove(&seq);
        let back_up = self.down[provider] && self.failing[provider].is_empty();
        if back_up {
            self.down[provider] = false;
        }
        let everywhere = match self.object_mut(seq) {
            Some(o) => {
                o.stored[provider] = true;
                o.everywhere()
            }
            None => false,
        };
        Stored {
            back_up,
            everywhere,
        }
    }

    /// A write of object `seq` to provider `provider` failed: the provider is down (it
    /// will be retried). Returns true when it was up until now.
    pub fn failed(&mut self, provider: usize, seq: u64) -> bool {
        self.failing[provider].insert(seq);
        !std::mem::replace(&mut self.down[provider], true)
    }

    /// Object `seq` is now in the fsync'd outbox.
    pub fn spooled(&mut self, seq: u64) {
        if let Some(o) = self.object_mut(seq) {
            o.spooled = true;
        }
    }

    pub fn is_up(&self, provider: usize) -> bool {
        !self.down[provider]
    }

    /// Some provider is down: a new object goes to the outbox at once.
    pub fn any_down(&self) -> bool {
        self.down.iter().any(|d| *d)
    }

    /// The objects `provider` lacks that are not in the outbox yet, oldest first: what to
    /// spool, in this order, while it is down.
    pub fn to_spool(&self, provider: usize) -> Vec<u64> {
        self.objects
            .iter()
            .filter(|o| !o.stored[provider] && !o.spooled)
            .map(|o| o.seq)
            .collect()
    }

    /// Acknowledge, in order, every object that counts; returns the newest end position
    /// among them when it is beyond the last one answered. The caller must record it
    /// durably before reporting it.
    pub fn acknowledge(&mut self) -> Option<Position> {
        let mut last = None;
        for o in &self.objects {
            if self.acked_seq.is_some_and(|a| o.seq <= a) {
                continue;
            }
            let counts = (0..self.providers).all(|p| o.stored[p] || (self.down[p] && o.spooled));
            if !counts {
                break;
            }
            self.acked_seq = Some(o.seq);
            if o.end.is_some() {
                last = o.end;
            }
        }
        let next = last.filter(|l| self.acked.map_or(true, |a| *l > a))?;
        self.acked = Some(next);
        Some(next)
    }

    /// The last position [`Ledger::acknowledge`] answered.
    pub fn acknowledged(&self) -> Option<Position> {
        self.acked
    }

    /// Drop, oldest first, the acknowledged objects every provider stores; returns their
    /// sequence numbers (their outbox files and bytes may go).
    pub fn forget(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        while let Some(o) = self.objects.front() {
            if !o.everywhere() || self.acked_seq.map_or(true, |a| o.seq > a) {
                break;
            }
            gone.push(o.seq);
            self.objects.pop_front();
        }
        gone
    }

    fn object_mut(&mut self, seq: u64) -> Option<&mut Object> {
        // By sequence number, not position: replayed outbox files may have gaps.
        let i = self.objects.binary_search_by_key(&seq, |o| o.seq).ok()?;
        self.objects.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(tli: u32, lsn: u64) -> Position {
        (TimelineId(tli), Lsn(lsn))
    }

    #[test]
    fn acknowledges_once_every_provider_stores() {
        let mut l = Ledger::new(2);
        l.record(0, Some(pos(1, 100)), false);
        assert_eq!(l.acknowledge(), None);
        assert_eq!(l.stored(0, 0), Stored::default());
        assert_eq!(l.acknowledge(), None);
        assert_eq!(
            l.stored(1, 0),
            Stored {
                back_up: false,
                everywhere: true
            }
        );
        assert_eq!(l.acknowledge(), Some(pos(1, 100)));
        assert_eq!(l.acknowledged(), Some(pos(1, 100)));
        assert_eq!(l.acknowledge(), None, "answered once");
        assert_eq!(l.forget(), vec![0]);
    }

    #[test]
    fn in_order_a_later_object_waits_for_an_earlier_one() {
        let mut l = Ledger::new(2);
        l.record(0, Some(pos(1, 100)), false);
        l.record(1, Some(pos(1, 200)), false);
        for p in 0..2 {
            l.stored(p, 1);
        }
        l.stored(0, 0);
        assert_eq!(l.acknowledge(), None);
        assert!(l.forget().is_empty(), "the front object is not everywhere");
        l.stored(1, 0);
        // Both at once: the answer is the newest end.
        assert_eq!(l.acknowledge(), Some(pos(1, 200)));
        assert_eq!(l.forget(), vec![0, 1]);
    }

    #[test]
    fn a_down_provider_counts_only_spooled_objects() {
        let mut l = Ledger::new(2);
        l.record(0, Some(pos(1, 100)), false);
        l.record(1, Some(pos(1, 200)), false);
        l.stored(0, 0);
        l.stored(0, 1);
        assert!(l.failed(1, 0), "went down");
        assert!(!l.failed(1, 0), "still down");
        assert!(!l.is_up(1) && l.any_down());
        assert_eq!(l.acknowledge(), None, "not in the outbox yet");
        assert_eq!(l.to_spool(1), vec![0, 1]);
        l.spooled(0);
        assert_eq!(l.to_spool(1), vec![1]);
        assert_eq!(l.acknowledge(), Some(pos(1, 100)));
        l.spooled(1);
        assert_eq!(l.acknowledge(), Some(pos(1, 200)));
        assert!(l.forget().is_empty(), "provider 1 still lacks them");
        assert_eq!(
            l.stored(1, 0),
            Stored {
                back_up: true,
                everywhere: true
            }
        );
        assert_eq!(l.forget(), vec![0]);
        l.stored(1, 1);
        assert_eq!(l.forget(), vec![1]);
    }

    #[test]
    fn the_spool_does_not_stand_in_for_a_provider_that_is_up() {
        let mut l = Ledger::new(2);
        // Spooled at once (some provider was down), but provider 1 is up and lacks it.
        l.record(0, Some(pos(1, 100)), true);
        l.stored(0, 0);
        assert_eq!(l.acknowledge(), None);
        l.stored(1, 0);
        assert_eq!(l.acknowledge(), Some(pos(1, 100)));
    }

    #[test]
    fn a_provider_with_a_failing_write_stays_down() {
        let mut l = Ledger::new(2);
        l.record(0, Some(pos(1, 100)), false);
        l.record(1, Some(pos(1, 200)), false);
        l.failed(1, 0);
        l.failed(1, 1);
        assert!(!l.stored(1, 1).back_up, "object 0 still fails");
        assert!(!l.is_up(1));
        assert!(l.stored(1, 0).back_up);
        assert!(l.is_up(1) && !l.any_down());
    }

    #[test]
    fn a_provider_back_up_must_store_what_is_not_yet_acknowledged() {
        let mut l = Ledger::new(2);
        l.record(0, Some(pos(1, 100)), false);
        l.record(1, Some(pos(1, 200)), false);
        l.failed(1, 0);
        l.spooled(0);
        l.spooled(1);
        // Provider 0 has only object 0: object 1 waits for it.
        l.stored(0, 0);
        assert_eq!(l.acknowledge(), Some(pos(1, 100)));
        // Provider 1 recovers before provider 0 stores object 1: now it must store it too.
        l.stored(1, 0);
        l.stored(0, 1);
        assert_eq!(l.acknowledge(), None);
        l.stored(1, 1);
        assert_eq!(l.acknowledge(), Some(pos(1, 200)));
    }

    #[test]
    fn objects_without_an_end_are_passed_but_answer_nothing() {
        let mut l = Ledger::new(1);
        // Replayed from the outbox (gaps in the sequence are fine), then a history file.
        l.record(3, None, true);
        l.record(5, None, true);
        l.record(6, None, false);
        l.stored(0, 3);
        l.stored(0, 5);
        l.stored(0, 6);
        assert_eq!(l.acknowledge(), None);
        assert_eq!(l.forget(), vec![3, 5, 6]);
        l.record(7, Some(pos(2, 50)), false);
        l.stored(0, 7);
        assert_eq!(l.acknowledge(), Some(pos(2, 50)));
    }

    #[test]
    fn timelines_compare_before_lsns() {
        let mut l = Ledger::new(1);
        l.record(0, Some(pos(1, 0x500)), false);
        // The new timeline forked behind the old one's end: still forward.
        l.record(1, Some(pos(2, 0x400)), false);
        l.stored(0, 1);
        assert_eq!(
            l.acknowledge(),
            None,
            "the old timeline's tail is not stored"
        );
        l.stored(0, 0);
        assert_eq!(l.acknowledge(), Some(pos(2, 0x400)));
    }

    #[test]
    fn never_answers_a_position_behind_the_last() {
        // The streamer never hands over an end behind an earlier one; if it did, the
        // position already answered would stand.
        let mut l = Ledger::new(1);
        l.record(0, Some(pos(1, 200)), false);
        l.record(1, Some(pos(1, 100)), false);
        l.stored(0, 0);
        assert_eq!(l.acknowledge(), Some(pos(1, 200)));
        l.stored(0, 1);
        assert_eq!(l.acknowledge(), None);
        assert_eq!(l.acknowledged(), Some(pos(1, 200)));
        assert_eq!(l.forget(), vec![0, 1]);
    }

    #[test]
    fn unknown_objects_are_ignored() {
        let mut l = Ledger::new(1);
        l.record(0, Some(pos(1, 1)), false);
        l.stored(0, 0);
        assert_eq!(l.forget(), Vec::<u64>::new(), "not acknowledged yet");
        assert_eq!(l.acknowledge(), Some(pos(1, 1)));
        assert_eq!(l.forget(), vec![0]);
        assert_eq!(l.stored(0, 0), Stored::default());
        l.spooled(0);
        assert!(l.to_spool(0).is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Ev {
            /// A new object: `next_tli`: its end is on the next timeline (forked up to
            /// 0x1000 behind the last end); `step`: how far past the last end (or the fork)
            /// it ends; `end`: it has an end (else a history file). It goes to the outbox at
            /// once when a provider is down, as the loop does.
            Record {
                next_tli: bool,
                step: u64,
                end: bool,
            },
            /// Provider `.0` stored the object at index `.1` (modulo the objects so far).
            Stored(usize, usize),
            /// A write of that object to provider `.0` failed.
            Failed(usize, usize),
            /// Spool what provider `.0` lacks while it is down, the first `.1` of them (a
            /// spool error stops the rest), as the loop does on a failed write.
            SpoolFor(usize, usize),
        }

        fn ev(providers: usize) -> impl Strategy<Value = Ev> {
            prop_oneof![
                3 => (prop::bool::weighted(0.15), 1u64..0x3000, prop::bool::weighted(0.85))
                    .prop_map(|(next_tli, step, end)| Ev::Record { next_tli, step, end }),
                5 => (0..providers, 0usize..64).prop_map(|(p, i)| Ev::Stored(p, i)),
                2 => (0..providers, 0usize..64).prop_map(|(p, i)| Ev::Failed(p, i)),
                2 => (0..providers, 0usize..8).prop_map(|(p, k)| Ev::SpoolFor(p, k)),
            ]
        }

        fn case() -> impl Strategy<Value = (usize, Vec<Ev>)> {
            (2usize..=3).prop_flat_map(|n| (Just(n), proptest::collection::vec(ev(n), 1..150)))
        }

        /// What the test knows of an object, kept apart from the ledger.
        struct Obj {
            seq: u64,
            end: Option<Position>,
            stored: Vec<bool>,
            /// In the outbox (its file is deleted when the ledger forgets it).
            spooled: bool,
            forgotten: bool,
        }

        /// Today's rule, written out plainly: the reference the ledger must match.
        struct Model {
            failing: Vec<BTreeSet<u64>>,
            down: Vec<bool>,
            /// How many objects, from the first, are acknowledged.
            acked: usize,
            answered: Option<Position>,
        }

        impl Model {
            fn counts(&self, o: &Obj) -> bool {
                (0..self.down.len()).all(|p| o.stored[p] || (self.down[p] && o.spooled))
            }

            fn acknowledge(&mut self, objs: &[Obj]) -> Option<Position> {
                let mut last = None;
                while self.acked < objs.len() && self.counts(&objs[self.acked]) {
                    last = objs[self.acked].end.or(last);
                    self.acked += 1;
                }
                let next = last.filter(|l| self.answered.map_or(true, |a| *l > a))?;
                self.answered = Some(next);
                Some(next)
            }
        }

        /// Run the events the way the delivery loop does (each followed by `acknowledge`
        /// and `forget`), checking the invariants after every step.
        fn run(n: usize, evs: &[Ev]) -> Result<(), TestCaseError> {
            let mut l = Ledger::new(n);
            let mut objs: Vec<Obj> = Vec::new();
            let mut m = Model {
                failing: vec![BTreeSet::new(); n],
                down: vec![false; n],
                acked: 0,
                answered: None,
            };
            let mut next_seq = 0u64;
            let mut last_end = (TimelineId(1), Lsn(0x10_0000));
            // Index of the object whose end was answered last.
            let mut answered_at: Option<usize> = None;
            for e in evs {
                match *e {
                    Ev::Record {
                        next_tli,
                        step,
                        end,
                    } => {
                        last_end = if next_tli {
                            (
                                TimelineId(last_end.0 .0 + 1),
                                Lsn(last_end.1 .0 - 0x1000 + step),
                            )
                        } else {
                            (last_end.0, Lsn(last_end.1 .0 + step))
                        };
                        let end = end.then_some(last_end);
                        let spooled = l.any_down();
                        // Gaps in the sequence, as replayed outbox files may have.
                        next_seq += 1 + step % 2;
                        l.record(next_seq, end, spooled);
                        objs.push(Obj {
                            seq: next_seq,
                            end,
                            stored: vec![false; n],
                            spooled,
                            forgotten: false,
                        });
                    }
                    Ev::Stored(p, i) => {
                        if objs.is_empty() {
                            continue;
                        }
                        let len = objs.len();
                        let o = &mut objs[i % len];
                        if o.stored[p] {
                            continue; // a lane stores each object once
                        }
                        o.stored[p] = true;
                        m.failing[p].remove(&o.seq);
                        let back_up = m.down[p] && m.failing[p].is_empty();
                        if back_up {
                            m.down[p] = false;
                        }
                        let everywhere = o.stored.iter().all(|s| *s);
                        prop_assert_eq!(
                            l.stored(p, o.seq),
                            Stored {
                                back_up,
                                everywhere
                            }
                        );
                    }
                    Ev::Failed(p, i) => {
                        if objs.is_empty() {
                            continue;
                        }
                        let o = &objs[i % objs.len()];
                        if o.stored[p] {
                            continue; // a stored object is not written again
                        }
                        m.failing[p].insert(o.seq);
                        prop_assert_eq!(l.failed(p, o.seq), !m.down[p]);
                        m.down[p] = true;
                    }
                    Ev::SpoolFor(p, k) => {
                        if !m.down[p] {
                            continue;
                        }
                        let want: Vec<u64> = objs
                            .iter()
                            .filter(|o| !o.forgotten && !o.stored[p] && !o.spooled)
                            .map(|o| o.seq)
                            .collect();
                        prop_assert_eq!(&l.to_spool(p), &want);
                        for seq in want.into_iter().take(k) {
                            l.spooled(seq);
                            objs.iter_mut()
                                .find(|o| o.seq == seq)
                                .expect("listed")
                                .spooled = true;
                        }
                    }
                }
                prop_assert_eq!(l.any_down(), m.down.iter().any(|d| *d));
                for (p, d) in m.down.iter().enumerate() {
                    prop_assert_eq!(l.is_up(p), !d);
                }

                // Acknowledge, as the loop does after every event.
                let answer = l.acknowledge();
                prop_assert_eq!(answer, m.acknowledge(&objs), "differs from today's rule");
                prop_assert_eq!(l.acknowledged(), m.answered);
                if let Some(a) = answer {
                    let i = objs
                        .iter()
                        .position(|o| o.end == Some(a))
                        .expect("a recorded end");
                    // Monotone, by (timeline, LSN) (ends are recorded in increasing order,
                    // so it is also the object answered last or a later one).
                    prop_assert!(answered_at.map_or(true, |j| j < i));
                    // Never past a range some provider neither stores nor spools; and the
                    // objects with an end that this answer newly passes each count: stored,
                    // or spooled for a provider that is down.
                    let from = answered_at.map_or(0, |j| j + 1);
                    for (k, o) in objs[..=i].iter().enumerate() {
                        for p in 0..n {
                            prop_assert!(
                                o.stored[p] || o.spooled,
                                "acknowledged {:?} past object {} that provider {} neither stores nor spools",
                                a, o.seq, p
                            );
                            if k >= from && o.end.is_some() {
                                prop_assert!(
                                    o.stored[p] || (o.spooled && m.down[p]),
                                    "acknowledged {:?}: object {} is only spooled for provider {}, which is up",
                                    a, o.seq, p
                                );
                            }
                        }
                    }
                    // Never onto a timeline before the ones before it are seen closed: every
                    // object recorded before its first object counts.
                    let first = objs
                        .iter()
                        .position(|o| o.end.is_some_and(|e| e.0 == a.0))
                        .expect("a's own");
                    for o in &objs[..first] {
                        prop_assert!(
                            (0..n).all(|p| o.stored[p] || o.spooled),
                            "crossed onto timeline {} before object {} was stored or spooled",
                            a.0,
                            o.seq
                        );
                    }
                    answered_at = Some(i);
                }

                // Forget, in order, only what is acknowledged and every provider stores.
                for seq in l.forget() {
                    let j = objs.iter().position(|o| o.seq == seq).expect("recorded");
                    prop_assert!(
                        objs[j].stored.iter().all(|s| *s),
                        "forgot {} that a provider lacks",
                        seq
                    );
                    prop_assert!(j < m.acked, "forgot {} before it was acknowledged", seq);
                    prop_assert!(
                        objs[..j].iter().all(|o| o.forgotten),
                        "forgot {} out of order",
                        seq
                    );
                    objs[j].forgotten = true;
                    objs[j].spooled = false; // its outbox file is deleted
                }

                // At every moment: every acknowledged object is, for every provider, stored
                // there or in the outbox.
                for o in &objs[..m.acked] {
                    prop_assert!(
                        (0..n).all(|p| o.stored[p] || o.spooled),
                        "acknowledged object {} lost",
                        o.seq
                    );
                }
            }

            // Liveness: once every provider stores everything, the newest end is answered,
            // every provider is up and everything is forgotten.
            for p in 0..n {
                for o in objs.iter_mut() {
                    if !o.stored[p] {
                        o.stored[p] = true;
                        l.stored(p, o.seq);
                    }
                }
            }
            l.acknowledge();
            prop_assert_eq!(l.acknowledged(), objs.iter().rev().find_map(|o| o.end));
            prop_assert!(!l.any_down());
            l.forget();
            prop_assert!(l.objects.is_empty());
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn acknowledgement_is_safe_monotone_and_today_s_rule((n, evs) in case()) {
                run(n, &evs)?;
            }
        }
    }
}
