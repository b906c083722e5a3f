-- Workspace files (projection `files`): the metadata of every file users
-- uploaded, from WorkspaceFile events. The bytes are on disk under
-- <data dir>/files/<owner_id>/<sha256>; deleted files keep their row
-- (is_deleted), as the event log keeps their history.

create table read.files (
    id           uuid        primary key,
    owner_id     uuid        not null,
    name         text        not null,
    size         bigint      not null,
    sha256       text        not null,
    content_type text        not null,
    is_deleted   boolean     not null default false,
    deleted_at   timestamptz,
    created_at   timestamptz not null,
    updated_at   timestamptz not null,
    version      bigint      not null
);

-- The list (newest first) and its count.
create index files_owner_created_idx on read.files (owner_id, created_at desc, id desc)
    where not is_deleted;
-- Whether a blob is still referenced by a live file of its owner.
create index files_owner_sha256_idx on read.files (owner_id, sha256) where not is_deleted;
