-- The rest of the auth surface: account state in the users read model,
-- login sessions (refresh-token families), and command-side secret stores.

alter table read.users
    add column active         boolean     not null default true,
    add column deactivated_at timestamptz,
    add column failed_logins  integer     not null default 0,
    add column locked_until   timestamptz,
    add column preferences    jsonb,
    add column photo          jsonb,
    add column updated_at     timestamptz;

-- One row per login (refresh-token family), from AuthSession events.
create table read.auth_sessions (
    id                uuid        primary key,
    user_id           uuid        not null,
    generation        integer     not null,
    started_at        timestamptz not null,
    last_refreshed_at timestamptz,
    revoked_at        timestamptz,
    revoke_reason     text,
    version           bigint      not null
);

create index auth_sessions_active_by_user_idx on read.auth_sessions (user_id) where revoked_at is null;

-- Refresh tokens, stored only as SHA-256 hashes; events count generations.
create table refresh_tokens (
    token_hash text        primary key,
    session_id uuid        not null,
    generation integer     not null,
    expires_at timestamptz not null,
    created_at timestamptz not null default now()
);

create index refresh_tokens_session_idx on refresh_tokens (session_id);

-- The one live API key of each user, stored only as a SHA-256 hash.
create table api_keys (
    user_id    uuid        primary key,
    key_id     uuid        not null unique,
    key_hash   text        not null unique,
    created_at timestamptz not null default now()
);

-- Profile photo bytes; the event records type, size and digest.
create table profile_photos (
    user_id      uuid        primary key,
    content_type text        not null,
    bytes        bytea       not null,
    sha256       text        not null,
    updated_at   timestamptz not null default now()
);
