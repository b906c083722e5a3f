-- Events that the relay could not publish, or that a projection could not
-- apply, are parked here instead of stopping everything behind them (see
-- docs/architecture.md, "Poison events"). One row per (stage, event): the
-- event that failed, and every later event of the same aggregate, which waits
-- behind it so that per-aggregate order holds.
--
-- stage: 'relay', or the name of the projection that parked it.
-- A row is open while released_at is null; `chronicle dead-letters release`
-- sets release_requested_at and notifies `chronicle_dead_letters`, and the
-- stage that parked it retries the aggregate's parked events in order.
create table dead_letters (
    id bigint generated always as identity primary key,
    stage text not null,
    aggregate_type text not null,
    aggregate_id text not null,
    sequence bigint not null,
    global_position bigint not null,
    event_type text not null,
    reason text not null,
    parked_at timestamptz not null default now(),
    release_requested_at timestamptz,
    released_at timestamptz,
    unique (stage, aggregate_type, aggregate_id, sequence)
);

create index dead_letters_open on dead_letters (stage, aggregate_type, aggregate_id)
    where released_at is null;
