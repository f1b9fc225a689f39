-- The attendance and referral database (SPEC §4, §6).

CREATE TABLE learners (
    id            INTEGER PRIMARY KEY,
    upn           TEXT NOT NULL UNIQUE,
    surname       TEXT NOT NULL,
    forename      TEXT NOT NULL,
    date_of_birth TEXT,
    gender        TEXT,
    year_group    TEXT,
    school_org_id INTEGER REFERENCES orgs (id),   -- home school, from its roster or referral
    details       TEXT NOT NULL DEFAULT '{}',     -- roster extras (sen, fsm, contacts, …) as JSON
    flagged       TEXT,                           -- why the hub should check this learner
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- One row per version of a learner's mark for a lesson; `current` marks the latest.
CREATE TABLE marks (
    id              INTEGER PRIMARY KEY,
    provider_org_id INTEGER NOT NULL REFERENCES orgs (id),
    learner_id      INTEGER NOT NULL REFERENCES learners (id),
    date            TEXT NOT NULL,
    start           TEXT NOT NULL,
    end_time        TEXT NOT NULL,
    course          TEXT NOT NULL,
    status          TEXT NOT NULL,
    contribution    INTEGER NOT NULL DEFAULT 0,
    grp             TEXT,
    location        TEXT,
    dfe_code        TEXT,
    note            TEXT,
    version         INTEGER NOT NULL,
    current         INTEGER NOT NULL,
    source          TEXT NOT NULL,                -- register | school decision
    upload_id       INTEGER NOT NULL REFERENCES uploads (id),
    row_number      INTEGER NOT NULL,
    created_at      TEXT NOT NULL
);
-- One index serves both the one-current-mark rule and lookups by learner and lesson time.
CREATE UNIQUE INDEX marks_current ON marks (learner_id, date, start, course, provider_org_id) WHERE current = 1;

CREATE TABLE referrals (
    id            INTEGER PRIMARY KEY,
    reference     TEXT NOT NULL UNIQUE,
    school_org_id INTEGER NOT NULL REFERENCES orgs (id),
    upload_id     INTEGER NOT NULL REFERENCES uploads (id),
    upn           TEXT NOT NULL,
    tier          INTEGER NOT NULL,
    form          TEXT NOT NULL,                  -- the whole form as JSON, unknown fields kept
    received_at   TEXT NOT NULL
);

CREATE TABLE withdrawals (
    id                 INTEGER PRIMARY KEY,
    reference          TEXT NOT NULL UNIQUE,
    requester_org_id   INTEGER NOT NULL REFERENCES orgs (id),
    provider_org_id    INTEGER NOT NULL REFERENCES orgs (id),
    upload_id          INTEGER NOT NULL REFERENCES uploads (id),
    upn                TEXT NOT NULL,
    course             TEXT NOT NULL,
    requested_last_day TEXT NOT NULL,
    reason             TEXT NOT NULL,
    impact_considered  INTEGER NOT NULL,
    meeting_date       TEXT,
    received_at        TEXT NOT NULL,
    deadline           TEXT NOT NULL
);

-- Plain-text receipts, one per ingested file, shown in /receipts/ of the sender and the hub.
CREATE TABLE receipts (
    id         INTEGER PRIMARY KEY,
    org_id     INTEGER NOT NULL REFERENCES orgs (id),
    upload_id  INTEGER NOT NULL UNIQUE REFERENCES uploads (id),
    name       TEXT NOT NULL,
    body       TEXT NOT NULL,
    accepted   INTEGER NOT NULL,
    rejected   INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

ALTER TABLE ingest_jobs ADD COLUMN outcome TEXT;   -- NULL while pending; the refusal reason for an unreadable file
