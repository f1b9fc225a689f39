-- Organisations, users and their keys (SPEC §1).
CREATE TABLE orgs (
    id                INTEGER PRIMARY KEY,
    slug              TEXT NOT NULL UNIQUE,
    kind              TEXT NOT NULL CHECK (kind IN ('hub', 'school', 'provider')),
    name              TEXT NOT NULL,
    urn               TEXT,
    ukprn             TEXT,
    coordinator_email TEXT,
    dsl_email         TEXT,
    disabled          INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL
);
-- Exactly one hub.
CREATE UNIQUE INDEX orgs_one_hub ON orgs (kind) WHERE kind = 'hub';

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    org_id        INTEGER NOT NULL REFERENCES orgs (id),
    username      TEXT NOT NULL UNIQUE,
    roles         TEXT NOT NULL,
    password_hash TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL
);

CREATE TABLE user_keys (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id),
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (user_id, fingerprint)
);

-- One row per committed file: one encrypted blob in the store.
CREATE TABLE uploads (
    id             INTEGER PRIMARY KEY,
    sender_org_id  INTEGER NOT NULL REFERENCES orgs (id),
    sender_user_id INTEGER REFERENCES users (id),   -- NULL for files from the CLI or a drop folder
    folder         TEXT NOT NULL,      -- write folder it was sent from: outbox/dsl, registers, …
    name           TEXT NOT NULL,      -- name in the sender's folder (may hold a sub-folder path)
    recipient_role TEXT NOT NULL,
    ingest_kind    TEXT,               -- register, absences, … or NULL for a plain transfer
    blob           TEXT NOT NULL,      -- store file name
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    recalled_at    TEXT,
    expired_at     TEXT
);
CREATE INDEX uploads_sender ON uploads (sender_org_id, folder);

-- One row per recipient organisation of an upload (several for a hub broadcast).
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    upload_id        INTEGER NOT NULL REFERENCES uploads (id),
    recipient_org_id INTEGER NOT NULL REFERENCES orgs (id),
    recipient_role   TEXT NOT NULL,
    inbox_folder     TEXT NOT NULL,    -- sender's slug for the hub, '' for schools and providers
    inbox_name       TEXT NOT NULL,    -- unique among visible files of that inbox folder
    downloaded_by    TEXT,
    downloaded_at    TEXT,
    deleted_at       TEXT,             -- hidden by the recipient
    recalled_at      TEXT              -- withdrawn by the sender before download
);
CREATE INDEX deliveries_inbox ON deliveries (recipient_org_id, inbox_folder, inbox_name);
CREATE INDEX deliveries_upload ON deliveries (upload_id);

-- Something happened that another part (mail, ingest) acts on; written in the same transaction.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    upload_id  INTEGER REFERENCES uploads (id),
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Ingest work, one row per ingest upload, written with the upload.
CREATE TABLE ingest_jobs (
    id         INTEGER PRIMARY KEY,
    upload_id  INTEGER NOT NULL UNIQUE REFERENCES uploads (id),
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Hash-chained audit log (SPEC §7).
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    org       TEXT NOT NULL,
    address   TEXT NOT NULL,
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
-- The newest entry's hash and sequence: removing the last entries is detected too.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
