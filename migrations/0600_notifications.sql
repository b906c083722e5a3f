-- Notifications (projection `notifications`): one row per notifying event of
-- Task, User and AuthSession, read/unread and deletion applied from the
-- owner's NotificationInbox events. Rows are derived: a rebuild recreates
-- them identically (the id is a UUID v5 of the source event).

create table read.notifications (
    id                    uuid        primary key,
    owner_id              uuid        not null,
    type                  text        not null,
    title                 text        not null,
    message               text        not null,
    -- the event this notification is about: (type, id, sequence) identifies it
    source_aggregate_type text        not null,
    source_aggregate_id   text        not null,
    source_sequence       bigint      not null,
    is_read               boolean     not null default false,
    read_at               timestamptz,
    -- when the source event was recorded
    created_at            timestamptz not null,
    unique (source_aggregate_type, source_aggregate_id, source_sequence)
);

-- The list (newest or oldest first) and its count.
create index notifications_owner_created_idx on read.notifications (owner_id, created_at desc, id desc);
-- The unread count (`X-Unread-Count`, `/unread/count`) and mark-all-read.
create index notifications_owner_unread_idx on read.notifications (owner_id, created_at)
    where not is_read;

-- What the projection must remember of a source aggregate whose later events
-- do not name their owner: a task's owner and current title (from
-- TaskCreated/TaskUpdated), a login session's user (from SessionStarted).
create table read.notification_sources (
    aggregate_type text not null,
    aggregate_id   text not null,
    owner_id       uuid not null,
    label          text,
    primary key (aggregate_type, aggregate_id)
);
