-- The rest of the training record (SPEC §4.6). Unit progress, tutor appraisals, initial
-- assessments and targets belong to a placement; a later row with the same key (the unit, the
-- appraisal's date, the assessment's description and date, the target's description and set
-- date) is a new version, and every version is kept. Their columns are JSON: the reports read
-- them as they were sent.
CREATE TABLE training_entries (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('progress', 'appraisal', 'assessment', 'target')),
    placement_id INTEGER NOT NULL REFERENCES placements (id),
    entry_key    TEXT NOT NULL,
    fields       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    current      INTEGER NOT NULL,
    upload_id    INTEGER NOT NULL REFERENCES uploads (id),
    row_number   INTEGER NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE UNIQUE INDEX training_entries_current ON training_entries (placement_id, kind, entry_key)
    WHERE current = 1;

-- Miscellaneous notes on a learner, from the hub, the home school or a placed provider; seen by
-- everyone who may see the learner.
CREATE TABLE learner_notes (
    id            INTEGER PRIMARY KEY,
    learner_id    INTEGER NOT NULL REFERENCES learners (id),
    author_org_id INTEGER NOT NULL REFERENCES orgs (id),
    author        TEXT NOT NULL,                 -- the user, or cli / drop
    subject       TEXT NOT NULL,
    note          TEXT NOT NULL,
    upload_id     INTEGER NOT NULL REFERENCES uploads (id),
    row_number    INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX learner_notes_learner ON learner_notes (learner_id);
