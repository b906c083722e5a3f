-- The compliance audit trail (docs/audit.md): one hash-chained entry per event
-- in commit order, and signed checkpoints of the chain head. Written only by
-- the `audit` projection; nothing here is ever updated or deleted.
create schema audit;

-- A rebuild of the trail never deletes: it starts a new generation, readers
-- use the newest one, and earlier generations stay as evidence.
create table audit.generations (
    generation integer     primary key check (generation >= 1),
    started_at timestamptz not null default now(),
    reason     text        not null
);

insert into audit.generations (generation, reason) values (1, 'initial');

-- `hash` = SHA-256 over the RFC 8785 canonical JSON of every other column but
-- `generation` (see projections/src/audit/entry.rs); `prev_hash` links the chain.
create table audit.entries (
    generation         integer     not null references audit.generations,
    seq                bigint      not null check (seq >= 1),
    global_position    bigint      not null,
    occurred_at        timestamptz,
    recorded_at        timestamptz not null,
    actor_id           text,
    actor_roles        text[]      not null,
    actor_ip           text,
    actor_user_agent   text,
    action             text        not null,
    event_version      text        not null,
    aggregate_type     text        not null,
    aggregate_id       text        not null,
    aggregate_sequence bigint      not null,
    request_id         text,
    correlation_id     text,
    causation_id       text,
    payload_digest     text        not null,
    metadata_digest    text        not null,
    prev_hash          text        not null,
    hash               text        not null,
    primary key (generation, seq),
    unique (generation, global_position)
);

create index audit_entries_aggregate_idx
    on audit.entries (generation, aggregate_type, aggregate_id, aggregate_sequence);
create index audit_entries_actor_idx on audit.entries (generation, actor_id, seq);

-- Signed chain heads: a compact JWS (RS256, `kid` of a key in the JWKS) over
-- {"seq", "head_hash", "signed_at"}. One per seq, whichever generation took it.
create table audit.checkpoints (
    seq       bigint      primary key check (seq >= 1),
    head_hash text        not null,
    signed_at timestamptz not null,
    kid       text        not null,
    signature text        not null
);

-- Append-only, like the events table (events_refuse_change from 0001).
create trigger audit_generations_append_only
    before update or delete on audit.generations
    for each row execute function events_refuse_change();
create trigger audit_generations_no_truncate
    before truncate on audit.generations
    for each statement execute function events_refuse_change();
create trigger audit_entries_append_only
    before update or delete on audit.entries
    for each row execute function events_refuse_change();
create trigger audit_entries_no_truncate
    before truncate on audit.entries
    for each statement execute function events_refuse_change();
create trigger audit_checkpoints_append_only
    before update or delete on audit.checkpoints
    for each row execute function events_refuse_change();
create trigger audit_checkpoints_no_truncate
    before truncate on audit.checkpoints
    for each statement execute function events_refuse_change();

revoke update, delete, truncate on audit.generations, audit.entries, audit.checkpoints from public;

-- Audit queries on the event store filter by actor and by time.
create index events_actor_idx on events ((metadata ->> 'actor_id'), global_position);
create index events_recorded_at_idx on events (recorded_at);
