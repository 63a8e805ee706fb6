-- The facts of each booked job for `GET /v1/generation` (latency, time to
-- first token, tokens, cost), so any replica can answer for a job another
-- replica served. Not money: written without waiting for the WAL flush.
CREATE TABLE generations (
    job_id BYTEA PRIMARY KEY CHECK (length(job_id) = 16),
    facts TEXT NOT NULL
);
