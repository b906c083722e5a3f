-- Snapshots written before this release applied every event of the command
-- that took them twice (the command's events were applied once by the event
-- sink and again by the snapshot writer; fixed in src/commands.rs). A
-- snapshot is a cache of the aggregate's state: dropping them makes the next
-- load replay the events, and the next snapshot is written correctly.
delete from snapshots;
