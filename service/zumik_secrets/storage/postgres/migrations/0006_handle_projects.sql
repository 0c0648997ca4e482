-- Zumik Secrets, PostgreSQL schema 0006: handles belong to the project that minted them.
--
-- A claim for one project resolves only its project's handles (README, visibility table), and a
-- project purge deletes them. Handles minted before this migration carry '' (no project): only
-- identities acting without a claim, for the whole tenant, resolve them.
ALTER TABLE handles ADD COLUMN project_id text NOT NULL DEFAULT ''
    CHECK (length(project_id) <= 63);
CREATE INDEX handles_by_project ON handles (tenant_id, project_id);
