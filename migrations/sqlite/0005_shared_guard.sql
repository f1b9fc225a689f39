-- Failed logins and temporary bans, shared by every gateway process on this database.
CREATE TABLE auth_failures (
    kind         TEXT NOT NULL CHECK (kind IN ('address', 'user')),
    subject      TEXT NOT NULL,     -- the address or the user name
    failures     INTEGER NOT NULL,  -- failures since first_at
    first_at     TEXT NOT NULL,
    banned_until TEXT,
    PRIMARY KEY (kind, subject)
);

-- Live SFTP sessions of every process, for `limits.sessions_per_user`. Each process renews its
-- rows; rows of a process that stopped go stale and stop counting.
CREATE TABLE live_sessions (
    id      INTEGER PRIMARY KEY,
    node    TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id),
    seen_at TEXT NOT NULL
);
CREATE INDEX live_sessions_user ON live_sessions (user_id);
