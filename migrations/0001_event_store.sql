-- The event store: postgres-es's events and snapshots tables, plus a
-- commit-ordered position for the relay and a record of when each row landed.

create table events (
    aggregate_type  text        not null,
    aggregate_id    text        not null,
    sequence        bigint      not null check (sequence >= 1),
    event_type      text        not null,
    event_version   text        not null,
    payload         jsonb       not null,
    metadata        jsonb       not null,
    -- assigned at insert time: unique, but not commit order
    global_position bigint      not null generated always as identity,
    -- the inserting transaction; rows below the oldest in-flight one are final
    transaction_id  xid8        not null default pg_current_xact_id(),
    recorded_at     timestamptz not null default now(),
    primary key (aggregate_type, aggregate_id, sequence)
);

create unique index events_global_position_idx on events (global_position);
create index events_commit_order_idx on events (transaction_id, global_position);

-- Append-only: rows may be inserted, never changed or removed, whoever asks.
create function events_refuse_change() returns trigger
language plpgsql as $$
begin
    raise exception 'table % is append-only: % refused', tg_table_name, tg_op
        using errcode = '42501';
end;
$$;

create trigger events_append_only
    before update or delete on events
    for each row execute function events_refuse_change();

create trigger events_no_truncate
    before truncate on events
    for each statement execute function events_refuse_change();

revoke update, delete, truncate on events from public;

-- Wakes the relay at commit; one notification per statement (postgres folds
-- identical notifications of a transaction into one).
create function events_notify() returns trigger
language plpgsql as $$
begin
    perform pg_notify('chronicle_events', '');
    return null;
end;
$$;

create trigger events_notify_relay
    after insert on events
    for each statement execute function events_notify();

create table snapshots (
    aggregate_type   text   not null,
    aggregate_id     text   not null,
    last_sequence    bigint not null check (last_sequence >= 0),
    current_snapshot bigint not null check (current_snapshot >= 0),
    payload          jsonb  not null,
    primary key (aggregate_type, aggregate_id, last_sequence)
);

-- How far the relay has published, in commit order.
create table relay_checkpoints (
    name            text        primary key,
    transaction_id  xid8        not null,
    global_position bigint      not null,
    updated_at      timestamptz not null
);
