-- Read models of conversations: projects (projection `projects`) and chat
-- sessions with their messages and tool executions (projection
-- `chat_sessions`). Written only by projection workers; soft-deleted rows
-- stay (the API no longer shows them), as the history does.

create table read.projects (
    id          uuid        primary key,
    owner_id    uuid        not null,
    name        text        not null,
    description text,
    settings    jsonb       not null,
    is_deleted  boolean     not null default false,
    deleted_at  timestamptz,
    created_at  timestamptz not null,
    updated_at  timestamptz not null,
    version     bigint      not null
);

create index projects_owner_created_idx on read.projects (owner_id, created_at desc, id desc)
    where not is_deleted;

create table read.chat_sessions (
    id                uuid        primary key,
    owner_id          uuid        not null,
    project_id        uuid,
    title             text,
    model             text        not null,
    system_prompt     text,
    message_count     bigint      not null default 0,
    prompt_tokens     bigint      not null default 0,
    completion_tokens bigint      not null default 0,
    total_tokens      bigint      not null default 0,
    last_activity_at  timestamptz not null,
    is_deleted        boolean     not null default false,
    deleted_at        timestamptz,
    created_at        timestamptz not null,
    updated_at        timestamptz not null,
    version           bigint      not null
);

create index chat_sessions_owner_created_idx on read.chat_sessions (owner_id, created_at desc, id desc)
    where not is_deleted;

-- One row per message, in the order of its session's events (`sequence`).
create table read.chat_messages (
    id                uuid        primary key,
    session_id        uuid        not null,
    owner_id          uuid        not null,
    sequence          bigint      not null,
    role              text        not null,
    content           text        not null,
    model             text,
    prompt_tokens     bigint,
    completion_tokens bigint,
    total_tokens      bigint,
    created_at        timestamptz not null
);

create index chat_messages_session_idx on read.chat_messages (session_id, sequence);

create table read.tool_executions (
    id          uuid        primary key,
    session_id  uuid        not null,
    owner_id    uuid        not null,
    sequence    bigint      not null,
    tool_name   text        not null,
    tool_type   text        not null,
    input       jsonb       not null,
    output      jsonb,
    status      text        not null,
    duration_ms bigint,
    created_at  timestamptz not null
);

create index tool_executions_session_idx on read.tool_executions (session_id, sequence);
