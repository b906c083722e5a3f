-- Command-side tables that events must not carry.

-- Password hashes live here, referenced by id from UserRegistered, so no
-- hash ever reaches an event payload, the bus or the audit trail.
create table credentials (
    id            uuid        primary key,
    password_hash text        not null,
    created_at    timestamptz not null default now()
);

-- Usernames are unique across users: a claim is taken before the user is
-- registered and released if registration fails.
create table username_claims (
    username   text        primary key,
    user_id    uuid        not null,
    claimed_at timestamptz not null default now()
);
