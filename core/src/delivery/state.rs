//! The delivery state machine: one pure function, [`next`], decides every transition.
//!
//! The dispatcher, the callbacks and the API all ask [`next`] what an event means for a
//! delivery in a given state, then apply the answer with a compare-and-swap. Nothing else
//! decides legality. It never does I/O and never panics: every (state, event) pair has an
//! answer, and adding a state or an event fails to compile until that answer is written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a delivery is. The happy path is `Created → Queued → Sent → Delivered → Acked`;
/// `Failed`, `Cancelled` and `Suppressed` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryState {
    Created,
    Queued,
    Sent,
    Delivered,
    Acked,
    Failed,
    Cancelled,
    Suppressed,
}

impl DeliveryState {
    /// Every state, in happy-path order then terminal states.
    pub const ALL: [DeliveryState; 8] = [
        DeliveryState::Created,
        DeliveryState::Queued,
        DeliveryState::Sent,
        DeliveryState::Delivered,
        DeliveryState::Acked,
        DeliveryState::Failed,
        DeliveryState::Cancelled,
        DeliveryState::Suppressed,
    ];

    /// The stable name stored in the database (a CHECK constraint lists the same names).
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Created => "CREATED",
            DeliveryState::Queued => "QUEUED",
            DeliveryState::Sent => "SENT",
            DeliveryState::Delivered => "DELIVERED",
            DeliveryState::Acked => "ACKED",
            DeliveryState::Failed => "FAILED",
            DeliveryState::Cancelled => "CANCELLED",
            DeliveryState::Suppressed => "SUPPRESSED",
        }
    }

    /// Position on the happy path; `None` for the terminal states.
    pub const fn progress(self) -> Option<u8> {
        match self {
            DeliveryState::Created => Some(0),
            DeliveryState::Queued => Some(1),
            DeliveryState::Sent => Some(2),
            DeliveryState::Delivered => Some(3),
            DeliveryState::Acked => Some(4),
            DeliveryState::Failed | DeliveryState::Cancelled | DeliveryState::Suppressed => None,
        }
    }

    /// `Failed`, `Cancelled` and `Suppressed`: nothing a provider says moves them.
    pub const fn is_terminal(self) -> bool {
        self.progress().is_none()
    }

    /// The end of the road for a delivery: a terminal state, or `Acked`.
    pub const fn is_final(self) -> bool {
        matches!(self, DeliveryState::Acked) || self.is_terminal()
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored state name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for DeliveryState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Something that happened to a delivery, from whoever saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryEvent {
    /// The dispatcher took the delivery off the log and is about to call the provider.
    Enqueue,
    /// The provider accepted the send (HTTP 2xx, SMTP 250, a DLR "smsc ack").
    Accepted,
    /// The provider reports the handset or inbox has it.
    Delivered,
    /// The guardian acknowledged the message (link, app, SMS reply).
    Acknowledged,
    /// The send failed for good: permanent provider error, last retry spent, receipt timeout.
    Failed,
    /// Staff recalled the message, or the guardian acknowledged on another channel.
    Cancel,
    /// Nothing may be sent: opted out, no address, bounced address, expired quiet hours.
    Suppress,
    /// Staff replayed a dead letter: a failed delivery goes back on the queue.
    Replay,
}

impl DeliveryEvent {
    pub const ALL: [DeliveryEvent; 8] = [
        DeliveryEvent::Enqueue,
        DeliveryEvent::Accepted,
        DeliveryEvent::Delivered,
        DeliveryEvent::Acknowledged,
        DeliveryEvent::Failed,
        DeliveryEvent::Cancel,
        DeliveryEvent::Suppress,
        DeliveryEvent::Replay,
    ];

    /// Events that arrive from outside our control (providers and guardians), in any
    /// order and any number of times.
    pub const EXTERNAL: [DeliveryEvent; 4] = [
        DeliveryEvent::Accepted,
        DeliveryEvent::Delivered,
        DeliveryEvent::Acknowledged,
        DeliveryEvent::Failed,
    ];
}

/// Why an event leaves a delivery where it is. Ignoring is normal, never an error: it is
/// counted so that duplicates and stragglers are visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    /// The delivery is already in the state this event leads to.
    Duplicate,
    /// The delivery is already past this event (a SENT after DELIVERED).
    Stale,
    /// The delivery is in a final state that this event cannot leave.
    Final,
    /// A cancel or suppress that came after the provider already had the message:
    /// reported, not recorded as a transition.
    AlreadySent,
    /// The event does not apply to this state (a replay of a delivery that did not fail).
    NotApplicable,
}

/// What to do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "state")]
pub enum Decision {
    /// Compare-and-swap the delivery into this state.
    Move(DeliveryState),
    /// Leave it, for this reason.
    Ignore(Ignored),
}

/// The one rule book.
///
/// - Forward along the happy path only, skips allowed (QUEUED → DELIVERED when the
///   provider's acceptance was lost).
/// - Into a terminal state only from a non-final one. `Acked` is final: once a guardian
///   has acknowledged, nothing a provider says afterwards changes it.
/// - Two ways out of `Failed`, and only these: a guardian's acknowledgment (proof that the
///   message reached them, e.g. after a receipt timeout) and a staff replay of the dead
///   letter. `Cancelled` and `Suppressed` are never left.
/// - Cancel and suppress apply only before the provider has the message.
pub const fn next(state: DeliveryState, event: DeliveryEvent) -> Decision {
    use Decision::{Ignore, Move};
    use DeliveryEvent as E;
    use DeliveryState as S;

    match (state, event) {
        // Cancelled and suppressed deliveries are done, whatever anyone says.
        (S::Cancelled | S::Suppressed, _) => Ignore(Ignored::Final),

        // An acknowledged delivery only recognises a second acknowledgment.
        (S::Acked, E::Acknowledged) => Ignore(Ignored::Duplicate),
        (S::Acked, _) => Ignore(Ignored::Final),

        // A failed delivery can still be acknowledged or replayed; nothing else moves it.
        (S::Failed, E::Acknowledged) => Move(S::Acked),
        (S::Failed, E::Replay) => Move(S::Queued),
        (S::Failed, E::Failed) => Ignore(Ignored::Duplicate),
        (S::Failed, _) => Ignore(Ignored::Final),

        // Replays apply to failed deliveries only.
        (_, E::Replay) => Ignore(Ignored::NotApplicable),

        // Anything not final can be acknowledged or fail.
        (_, E::Acknowledged) => Move(S::Acked),
        (_, E::Failed) => Move(S::Failed),

        // Forward moves along the happy path.
        (S::Created, E::Enqueue) => Move(S::Queued),
        (S::Queued, E::Enqueue) => Ignore(Ignored::Duplicate),
        (S::Sent | S::Delivered, E::Enqueue) => Ignore(Ignored::Stale),

        (S::Created | S::Queued, E::Accepted) => Move(S::Sent),
        (S::Sent, E::Accepted) => Ignore(Ignored::Duplicate),
        (S::Delivered, E::Accepted) => Ignore(Ignored::Stale),

        (S::Created | S::Queued | S::Sent, E::Delivered) => Move(S::Delivered),
        (S::Delivered, E::Delivered) => Ignore(Ignored::Duplicate),

        // Cancel and suppress only before the provider has it.
        (S::Created | S::Queued, E::Cancel) => Move(S::Cancelled),
        (S::Created | S::Queued, E::Suppress) => Move(S::Suppressed),
        (S::Sent | S::Delivered, E::Cancel | E::Suppress) => Ignore(Ignored::AlreadySent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Decision::{Ignore, Move};
    use DeliveryEvent as E;
    use DeliveryState as S;

    /// Every state × every event, written out by hand. A change to the rules must change
    /// this table.
    #[rustfmt::skip]
    const TABLE: [(DeliveryState, [Decision; 8]); 8] = [
        //               Enqueue                        Accepted                       Delivered                      Acknowledged          Failed                         Cancel                           Suppress                         Replay
        (S::Created,   [Move(S::Queued),                Move(S::Sent),                 Move(S::Delivered),            Move(S::Acked),       Move(S::Failed),               Move(S::Cancelled),              Move(S::Suppressed),             Ignore(Ignored::NotApplicable)]),
        (S::Queued,    [Ignore(Ignored::Duplicate),     Move(S::Sent),                 Move(S::Delivered),            Move(S::Acked),       Move(S::Failed),               Move(S::Cancelled),              Move(S::Suppressed),             Ignore(Ignored::NotApplicable)]),
        (S::Sent,      [Ignore(Ignored::Stale),         Ignore(Ignored::Duplicate),    Move(S::Delivered),            Move(S::Acked),       Move(S::Failed),               Ignore(Ignored::AlreadySent),    Ignore(Ignored::AlreadySent),    Ignore(Ignored::NotApplicable)]),
        (S::Delivered, [Ignore(Ignored::Stale),         Ignore(Ignored::Stale),        Ignore(Ignored::Duplicate),    Move(S::Acked),       Move(S::Failed),               Ignore(Ignored::AlreadySent),    Ignore(Ignored::AlreadySent),    Ignore(Ignored::NotApplicable)]),
        (S::Acked,     [Ignore(Ignored::Final),         Ignore(Ignored::Final),        Ignore(Ignored::Final),        Ignore(Ignored::Duplicate), Ignore(Ignored::Final),  Ignore(Ignored::Final),          Ignore(Ignored::Final),          Ignore(Ignored::Final)]),
        (S::Failed,    [Ignore(Ignored::Final),         Ignore(Ignored::Final),        Ignore(Ignored::Final),        Move(S::Acked),       Ignore(Ignored::Duplicate),    Ignore(Ignored::Final),          Ignore(Ignored::Final),          Move(S::Queued)]),
        (S::Cancelled, [Ignore(Ignored::Final),         Ignore(Ignored::Final),        Ignore(Ignored::Final),        Ignore(Ignored::Final), Ignore(Ignored::Final),      Ignore(Ignored::Final),          Ignore(Ignored::Final),          Ignore(Ignored::Final)]),
        (S::Suppressed,[Ignore(Ignored::Final),         Ignore(Ignored::Final),        Ignore(Ignored::Final),        Ignore(Ignored::Final), Ignore(Ignored::Final),      Ignore(Ignored::Final),          Ignore(Ignored::Final),          Ignore(Ignored::Final)]),
    ];

    #[test]
    fn every_state_and_event_has_the_decision_of_the_table() {
        for (state, decisions) in TABLE {
            for (event, expected) in DeliveryEvent::ALL.into_iter().zip(decisions) {
                assert_eq!(next(state, event), expected, "next({state:?}, {event:?})");
            }
        }
        let states: Vec<_> = TABLE.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            states,
            DeliveryState::ALL,
            "the table covers every state once"
        );
    }

    #[test]
    fn state_names_round_trip_through_their_stored_form() {
        for state in DeliveryState::ALL {
            assert_eq!(state.as_str().parse::<DeliveryState>(), Ok(state));
        }
        assert!(
            "sent".parse::<DeliveryState>().is_err(),
            "names are case-sensitive"
        );
    }

    fn apply_all(start: DeliveryState, events: &[DeliveryEvent]) -> DeliveryState {
        events
            .iter()
            .fold(start, |state, &event| match next(state, event) {
                Move(to) => to,
                Ignore(_) => state,
            })
    }

    /// The final state of a delivery that received this *set* of external events,
    /// whatever their order and multiplicity.
    fn expected_outcome(start: DeliveryState, seen: &[DeliveryEvent]) -> DeliveryState {
        let has = |e| seen.contains(&e);
        if start.is_final() && start != S::Failed {
            start
        } else if has(E::Acknowledged) {
            S::Acked
        } else if start == S::Failed || has(E::Failed) {
            S::Failed
        } else if has(E::Delivered) || start == S::Delivered {
            S::Delivered
        } else if has(E::Accepted) || start == S::Sent {
            S::Sent
        } else {
            start
        }
    }

    fn any_state() -> impl Strategy<Value = DeliveryState> {
        proptest::sample::select(DeliveryState::ALL.to_vec())
    }

    fn any_event() -> impl Strategy<Value = DeliveryEvent> {
        proptest::sample::select(DeliveryEvent::ALL.to_vec())
    }

    fn external_event() -> impl Strategy<Value = DeliveryEvent> {
        proptest::sample::select(DeliveryEvent::EXTERNAL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Provider and guardian events only: the happy-path position never decreases.
        #[test]
        fn external_events_never_move_a_delivery_backward(
            start in any_state(),
            events in proptest::collection::vec(external_event(), 0..24),
        ) {
            let mut state = start;
            for event in events {
                let before = state;
                if let Move(to) = next(state, event) {
                    state = to;
                }
                if let (Some(a), Some(b)) = (before.progress(), state.progress()) {
                    prop_assert!(b >= a, "{before:?} --{event:?}--> {state:?} went backward");
                }
            }
        }

        /// Any events at all: a terminal state is left only as the design allows —
        /// FAILED → ACKED by acknowledgment and FAILED → QUEUED by replay.
        #[test]
        fn terminal_states_are_left_only_by_ack_or_replay_of_a_failure(
            state in any_state(),
            event in any_event(),
        ) {
            if let Move(to) = next(state, event) {
                prop_assert_ne!(to, state, "a move always changes the state");
                match state {
                    S::Cancelled | S::Suppressed | S::Acked =>
                        prop_assert!(false, "{state:?} left by {event:?}"),
                    S::Failed => prop_assert!(
                        matches!((event, to), (E::Acknowledged, S::Acked) | (E::Replay, S::Queued)),
                        "FAILED left by {event:?} to {to:?}"
                    ),
                    _ => {}
                }
            }
        }

        /// Duplicated and reordered external events converge: the end state depends only
        /// on which events happened, not on their order or how often they arrived.
        #[test]
        fn duplicated_and_reordered_events_end_in_the_same_state(
            start in any_state(),
            events in proptest::collection::vec(external_event(), 0..16),
            shuffle_seed in any::<u64>(),
            duplicate_every in 1usize..4,
        ) {
            let mut reordered: Vec<_> = events.iter().copied()
                .enumerate()
                .flat_map(|(i, e)| std::iter::repeat_n(e, if i % duplicate_every == 0 { 2 } else { 1 }))
                .collect();
            // A deterministic Fisher–Yates from the seed: proptest shrinks the seed too.
            let mut x = shuffle_seed | 1;
            for i in (1..reordered.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                reordered.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let in_order = apply_all(start, &events);
            let shuffled = apply_all(start, &reordered);
            prop_assert_eq!(in_order, shuffled);
            prop_assert_eq!(in_order, expected_outcome(start, &events));
        }

        /// Applying an event twice is the same as applying it once: the repeat is ignored.
        #[test]
        fn every_event_is_idempotent(state in any_state(), event in any_event()) {
            let once = apply_all(state, &[event]);
            prop_assert_eq!(once, apply_all(state, &[event, event]));
            prop_assert!(matches!(next(once, event), Ignore(_)), "{event:?} moved {once:?} again");
        }
    }
}
