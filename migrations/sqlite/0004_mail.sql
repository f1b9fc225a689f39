-- Email notifications (SPEC §5): the durable outbox.

-- A user's own address: messages for a role also go to the users who hold it.
ALTER TABLE users ADD COLUMN email TEXT;

-- Set when a dsl delivery not downloaded in time was escalated to the hub coordinator.
ALTER TABLE deliveries ADD COLUMN escalated_at TEXT;

-- One row per message, written in the same transaction as the event it tells of.
CREATE TABLE mail (
    id           INTEGER PRIMARY KEY,
    event_id     INTEGER NOT NULL REFERENCES events (id),
    kind         TEXT NOT NULL,            -- transfer, dsl_transfer, rejections, …
    to_org_id    INTEGER NOT NULL REFERENCES orgs (id),
    to_role      TEXT NOT NULL,            -- the contact role at that organisation
    to_user_id   INTEGER REFERENCES users (id),   -- the uploader, for receipts
    about        TEXT NOT NULL,            -- JSON {org id: count}: what the message counts
    group_key    TEXT,                     -- rows still waiting with the same key are merged
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       TEXT NOT NULL,            -- not sent before (back-off after a failure)
    lease_until  TEXT,                     -- a sender claimed it until then
    last_error   TEXT,
    created_at   TEXT NOT NULL,
    sent_at      TEXT
);
CREATE INDEX mail_due ON mail (state, due_at);
CREATE INDEX mail_group ON mail (group_key) WHERE state = 'pending';
