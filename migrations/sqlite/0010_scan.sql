-- Malware scanning (SPEC §7). An upload says how it was scanned: 'clean', or 'unscanned' (no
-- scanner configured, or clamd failed and scan.on_error is deliver); rows from before this
-- migration are NULL and read as unscanned. A refused upload is stored nowhere: only this row
-- and its audit entry remain.
ALTER TABLE uploads ADD COLUMN scan TEXT;

CREATE TABLE refused_uploads (
    id             INTEGER PRIMARY KEY,
    sender_org_id  INTEGER NOT NULL REFERENCES orgs (id),
    sender_user_id INTEGER REFERENCES users (id),   -- NULL for files from the CLI or a drop folder
    folder         TEXT NOT NULL,
    name           TEXT NOT NULL,
    recipient_role TEXT NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    reason         TEXT NOT NULL CHECK (reason IN ('malware', 'unscanned')),
    detail         TEXT NOT NULL,                  -- the signature, or why the scan failed
    created_at     TEXT NOT NULL
);
