-- Analytics (projections `analytics_users`, `analytics_tasks`,
-- `analytics_chat`): how many of each thing happened per hour, by the time
-- its event was recorded. `/v1/analytics` sums these rows over a window;
-- it never scans the event store.

create table read.analytics_hourly (
    hour   timestamptz not null,
    metric text        not null,
    value  bigint      not null,
    primary key (metric, hour)
);
