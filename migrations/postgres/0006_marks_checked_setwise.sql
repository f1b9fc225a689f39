-- A register applies up to a million marks in one statement. PostgreSQL checks a foreign key with
-- a trigger per row: the three on `marks` took 2.0 of 2.7 s for 200,000 rows (docs/benchmarks.md).
-- The register apply checks the same set-wise instead (every staged learner exists; the provider
-- and the upload are the job's own rows, and no learner, organisation or upload is ever deleted).
ALTER TABLE marks DROP CONSTRAINT marks_provider_org_id_fkey;
ALTER TABLE marks DROP CONSTRAINT marks_learner_id_fkey;
ALTER TABLE marks DROP CONSTRAINT marks_upload_id_fkey;
