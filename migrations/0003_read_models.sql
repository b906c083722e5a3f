-- Read models, written only by projection workers.
create schema read;

create table read.users (
    id            uuid        primary key,
    email         text        not null unique,
    username      text        unique,
    name          text,
    roles         text[]      not null,
    created_at    timestamptz not null,
    last_login_at timestamptz,
    version       bigint      not null
);

create table read.tasks (
    id          uuid        primary key,
    owner_id    uuid        not null,
    title       text        not null,
    description text,
    completed   boolean     not null,
    is_deleted  boolean     not null,
    deleted_at  timestamptz,
    project_id  uuid,
    due_at      timestamptz,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    version     bigint      not null
);

create index tasks_owner_created_idx on read.tasks (owner_id, created_at desc, id desc);

-- Per aggregate, the last sequence each projection applied: the guard that
-- makes a redelivered event a no-op (kept after a purge removes the row).
create table read.aggregate_versions (
    projection     text   not null,
    aggregate_type text   not null,
    aggregate_id   text   not null,
    version        bigint not null,
    primary key (projection, aggregate_type, aggregate_id)
);

-- Where each projection is on the stream, and why it stopped if it did.
create table read.projection_checkpoints (
    projection      text        primary key,
    stream_sequence bigint      not null default 0,
    last_recorded_at timestamptz,
    failed_at       timestamptz,
    failure         text,
    updated_at      timestamptz not null default now()
);
