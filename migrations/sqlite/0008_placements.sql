-- Placements (SPEC §4.0): one learner on one provider's course, the key of everything a provider
-- sends and of who may see a learner (SPEC §1). Created, updated and ended by the hub.
CREATE TABLE placements (
    id              INTEGER PRIMARY KEY,
    learner_id      INTEGER NOT NULL REFERENCES learners (id),
    provider_org_id INTEGER NOT NULL REFERENCES orgs (id),
    course          TEXT NOT NULL,
    start_date      TEXT NOT NULL,
    end_date        TEXT,                          -- NULL while open
    cohort          TEXT,
    qualification   TEXT,
    partnership     TEXT,
    referral        TEXT,                          -- the REF-… reference it answers
    upload_id       INTEGER REFERENCES uploads (id), -- NULL for placements made by this migration
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (learner_id, provider_org_id, course, start_date)
);
CREATE INDEX placements_provider ON placements (provider_org_id, learner_id);

-- Today's data moves over: every (learner, provider, course) with marks becomes an open
-- placement starting at its first mark, so every figure stays as it was.
INSERT INTO placements (learner_id, provider_org_id, course, start_date, created_at, updated_at)
SELECT learner_id, provider_org_id, course, MIN(date), MIN(created_at), MIN(created_at)
FROM marks GROUP BY learner_id, provider_org_id, course;

-- The hub's copy of a receipt, when it names more than the sender may read (which school holds
-- a UPN that a roster or referral named).
ALTER TABLE receipts ADD COLUMN hub_body TEXT;            -- NULL when the hub reads the same as the sender
