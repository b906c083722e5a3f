-- "Session" now means two things: a login session (refresh-token family, the
-- AuthSession aggregate) and a chat session (ChatSession). The login side is
-- named auth_session everywhere: its projection and its refresh-token column.
update read.projection_checkpoints set projection = 'auth_sessions' where projection = 'sessions';
update read.aggregate_versions set projection = 'auth_sessions' where projection = 'sessions';
alter table refresh_tokens rename column session_id to auth_session_id;
alter index refresh_tokens_session_idx rename to refresh_tokens_auth_session_idx;
