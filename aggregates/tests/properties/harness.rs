//! The checks every aggregate's properties share.
//!
//! A history is built the way `cqrs_es::CqrsFramework` builds it: each
//! command is handled by a copy of the current state with a fresh
//! `EventSink`; an accepted command's events are committed and its copy
//! becomes the state, a refused command leaves the state as it was (the
//! framework throws the copy away).

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use proptest::test_runner::Config;
use serde_json::Value;

/// Modest by default so the suite stays fast; `PROPTEST_CASES` overrides.
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(128);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs a future that never waits on anything (aggregates are pure; the
/// fake services answer at once).
pub fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an aggregate's handle waited on something"),
    }
}

/// What a sequence of commands produced.
pub struct History<A: Aggregate> {
    /// The state after handling every command.
    pub state: A,
    /// The accepted events, in order.
    pub events: Vec<A::Event>,
    /// How many commands were accepted and refused.
    pub accepted: usize,
    pub refused: usize,
}

/// Handles `commands` in turn; a panic in `handle` fails the property.
pub fn handle_all<A>(commands: Vec<A::Command>, services: &A::Services) -> History<A>
where
    A: Aggregate + Clone,
{
    let mut history = History {
        state: A::default(),
        events: Vec::new(),
        accepted: 0,
        refused: 0,
    };
    for command in commands {
        let mut next = history.state.clone();
        let sink = EventSink::<A>::default();
        let result = now(next.handle(command, services, &sink));
        let events = now(sink.collect());
        match result {
            Ok(()) => {
                history.state = next;
                history.events.extend(events);
                history.accepted += 1;
            }
            Err(_) => history.refused += 1,
        }
    }
    history
}

/// The state `events` give when applied in order to `state`.
pub fn replay<A: Aggregate>(mut state: A, events: &[A::Event]) -> A
where
    A::Event: Clone,
{
    for event in events {
        state.apply(event.clone());
    }
    state
}

/// (a) Replaying the accepted events from `Default` gives the state that
/// handling reached.
pub fn replay_gives_the_handled_state<A>(commands: Vec<A::Command>, services: &A::Services)
where
    A: Aggregate + Clone + PartialEq + Debug,
    A::Event: Clone,
{
    let history = handle_all::<A>(commands, services);
    let replayed = replay(A::default(), &history.events);
    assert_eq!(replayed, history.state, "replay differs from handling");
}

/// (b) For every k, the state after k events stored as cqrs-es stores a
/// snapshot (serde_json, through text as the database returns it), read
/// back, plus the remaining events, equals the full replay.
pub fn snapshot_plus_tail_equals_replay<A>(commands: Vec<A::Command>, services: &A::Services)
where
    A: Aggregate + Clone + PartialEq + Debug,
    A::Event: Clone,
{
    let history = handle_all::<A>(commands, services);
    let full = replay(A::default(), &history.events);
    let mut state = A::default();
    for k in 0..=history.events.len() {
        let stored = serde_json::to_value(&state).expect("a snapshot serialises");
        let text = serde_json::to_string(&stored).expect("a snapshot prints");
        let loaded: A = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("snapshot after {k} events does not load: {err}"));
        assert_eq!(loaded, state, "snapshot after {k} events changed on reload");
        let resumed = replay(loaded, &history.events[k..]);
        assert_eq!(resumed, full, "snapshot after {k} events + tail differs");
        if let Some(event) = history.events.get(k) {
            state.apply(event.clone());
        }
    }
}

/// (c) Every accepted event, stored as cqrs-es stores it (payload JSON plus
/// `event_type` and `event_version` columns), reads back as itself; the
/// payload is tagged by its `event_type`, which the relay strips.
pub fn events_round_trip<A>(commands: Vec<A::Command>, services: &A::Services)
where
    A: Aggregate + Clone,
    A::Event: Clone + PartialEq + Debug,
{
    let history = handle_all::<A>(commands, services);
    for event in history.events {
        let event_type = event.event_type();
        let event_version = event.event_version();
        let payload = serde_json::to_value(&event).expect("an event serialises");
        match &payload {
            Value::Object(map) => assert!(
                map.len() == 1 && map.contains_key(&event_type),
                "payload of {event_type} is not tagged by its event type: {payload}"
            ),
            other => panic!("payload of {event_type} is not an object: {other}"),
        }
        let text = serde_json::to_string(&payload).expect("a payload prints");
        let read: A::Event = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{event_type} does not read back: {err}"));
        assert_eq!(read, event, "{event_type} changed through its stored form");
        assert_eq!(read.event_type(), event_type);
        assert_eq!(read.event_version(), event_version);
    }
}

/// Every accepted event's payload, as the relay publishes it (the inner
/// object), matches `docs/schemas/<event_type>.v1.json`.
pub fn events_match_their_schemas<A>(commands: Vec<A::Command>, services: &A::Services)
where
    A: Aggregate + Clone,
{
    let history = handle_all::<A>(commands, services);
    for event in history.events {
        let event_type = event.event_type();
        let stored = serde_json::to_value(&event).expect("an event serialises");
        let payload = &stored[&event_type];
        let problems = crate::schema::problems(&event_type, payload);
        assert!(
            problems.is_empty(),
            "{}\npayload: {payload}",
            problems.join("\n")
        );
    }
}

/// (d) `handle` never panics, whatever the command and the state: every
/// command is also tried on every state the history went through.
pub fn handle_never_panics<A>(commands: Vec<A::Command>, services: &A::Services)
where
    A: Aggregate + Clone,
    A::Command: Clone,
    A::Event: Clone,
{
    let history = handle_all::<A>(commands.clone(), services);
    let mut state = A::default();
    let mut states = vec![state.clone()];
    for event in &history.events {
        state.apply(event.clone());
        states.push(state.clone());
    }
    for state in states {
        for command in &commands {
            let mut copy = state.clone();
            let sink = EventSink::<A>::default();
            let _ = now(copy.handle(command.clone(), services, &sink));
        }
    }
}

/// Loading any JSON as a stored event or as a snapshot answers `Ok` or
/// `Err`, never a panic, and what loads can be applied: arbitrary JSON
/// (tagged by an event type or not), and every accepted event with one of
/// its fields replaced by arbitrary JSON, applied to the state it followed.
pub fn loading_is_total<A>(
    commands: Vec<A::Command>,
    services: &A::Services,
    event_type: &str,
    field: proptest::sample::Index,
    replacement: Value,
) where
    A: Aggregate + Clone,
    A::Event: Clone,
{
    let tagged = Value::Object(serde_json::Map::from_iter([(
        event_type.to_owned(),
        replacement.clone(),
    )]));
    for stored in [tagged, replacement.clone()] {
        if let Ok(event) = serde_json::from_value::<A::Event>(stored.clone()) {
            A::default().apply(event);
        }
        if let Ok(state) = serde_json::from_value::<A>(stored) {
            let _ = serde_json::to_value(&state);
        }
    }
    let history = handle_all::<A>(commands, services);
    let mut replacements = crate::gen::EDGE_VALUES.with(Clone::clone);
    replacements.push(replacement);
    let mut state = A::default();
    for event in history.events {
        let stored = serde_json::to_value(&event).expect("an event serialises");
        let fields = stored
            .as_object()
            .and_then(|tagged| tagged.values().next())
            .and_then(Value::as_object)
            .map_or(0, |fields| fields.len());
        // Every field in turn, with every replacement; `field` picks the
        // first to try, so shrinking finds the smallest case.
        for offset in 0..fields {
            let index = (field.index(fields) + offset) % fields;
            for value in &replacements {
                let mut damaged = stored.clone();
                if let Some((_, slot)) = damaged
                    .as_object_mut()
                    .and_then(|tagged| tagged.values_mut().next())
                    .and_then(Value::as_object_mut)
                    .and_then(|fields| fields.iter_mut().nth(index))
                {
                    *slot = value.clone();
                }
                if let Ok(damaged) = serde_json::from_value::<A::Event>(damaged) {
                    state.clone().apply(damaged);
                }
            }
        }
        state.apply(event);
    }
}

/// Declares the four properties for one aggregate, given a strategy for a
/// command sequence and an expression building its services.
#[macro_export]
macro_rules! aggregate_properties {
    ($aggregate:ty, $commands:expr, $services:expr, $event_types:expr) => {
        use proptest::prelude::*;
        use $crate::harness;

        /// Guards the properties themselves: a strategy whose commands were
        /// all refused would make them hold vacuously.
        #[test]
        fn the_command_strategy_reaches_every_event_type() {
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..256 {
                let commands = proptest::strategy::ValueTree::current(
                    &proptest::strategy::Strategy::new_tree(&$commands, &mut runner)
                        .expect("a command sequence"),
                );
                let history = harness::handle_all::<$aggregate>(commands, &$services);
                for event in &history.events {
                    seen.insert(cqrs_es::DomainEvent::event_type(event));
                }
            }
            let missing: Vec<&str> = $event_types
                .iter()
                .copied()
                .filter(|event_type| !seen.contains(*event_type))
                .collect();
            assert!(missing.is_empty(), "never produced: {missing:?}");
        }

        proptest! {
            #![proptest_config(harness::config())]

            #[test]
            fn replaying_the_accepted_events_gives_the_state_handling_reached(commands in $commands) {
                harness::replay_gives_the_handled_state::<$aggregate>(commands, &$services);
            }

            #[test]
            fn a_snapshot_after_any_event_plus_the_tail_equals_the_full_replay(commands in $commands) {
                harness::snapshot_plus_tail_equals_replay::<$aggregate>(commands, &$services);
            }

            #[test]
            fn every_event_reads_back_as_itself_from_its_stored_json(commands in $commands) {
                harness::events_round_trip::<$aggregate>(commands, &$services);
            }

            #[test]
            fn every_event_matches_its_published_json_schema(commands in $commands) {
                harness::events_match_their_schemas::<$aggregate>(commands, &$services);
            }

            #[test]
            fn handle_never_panics_on_any_command_in_any_reached_state(commands in $commands) {
                harness::handle_never_panics::<$aggregate>(commands, &$services);
            }

            /// There is no upcaster yet (every event is version 1.0), so
            /// loading is deserialising: it must be total too.
            #[test]
            fn any_stored_json_loads_as_an_event_or_snapshot_or_is_refused_without_panicking(
                commands in $commands,
                event_type in proptest::sample::select($event_types.to_vec()),
                field in any::<proptest::sample::Index>(),
                replacement in $crate::gen::json(),
            ) {
                harness::loading_is_total::<$aggregate>(
                    commands, &$services, event_type, field, replacement,
                );
            }
        }
    };
}
