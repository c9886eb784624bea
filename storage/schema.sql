-- batchgate metadata schema. One file, applied in order by version.
-- Bump SCHEMA_VERSION in storage/metadata.py and append a migration block
-- below, headed like the one that follows, when the schema changes.

-- migration 1
CREATE TABLE IF NOT EXISTS api_keys (
    id          VARCHAR PRIMARY KEY,
    name        VARCHAR NOT NULL,
    key_hash    VARCHAR NOT NULL,
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE IF NOT EXISTS files (
    id          VARCHAR PRIMARY KEY,
    api_key_id  VARCHAR,
    filename    VARCHAR NOT NULL,
    purpose     VARCHAR NOT NULL,
    bytes       BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    deleted_at  BIGINT,
    blob_name   VARCHAR NOT NULL,
    mime_type   VARCHAR
);

CREATE TABLE IF NOT EXISTS batches (
    id                  VARCHAR PRIMARY KEY,
    api_key_id          VARCHAR,
    endpoint            VARCHAR NOT NULL,
    input_file_id       VARCHAR NOT NULL,
    completion_window   VARCHAR NOT NULL,
    status              VARCHAR NOT NULL,
    output_file_id      VARCHAR,
    error_file_id       VARCHAR,
    created_at          BIGINT  NOT NULL,
    in_progress_at      BIGINT,
    expires_at          BIGINT,
    finalizing_at       BIGINT,
    completed_at        BIGINT,
    failed_at           BIGINT,
    expired_at          BIGINT,
    cancelling_at       BIGINT,
    cancelled_at        BIGINT,
    total               INTEGER NOT NULL DEFAULT 0,
    completed           INTEGER NOT NULL DEFAULT 0,
    failed              INTEGER NOT NULL DEFAULT 0,
    metadata            VARCHAR,
    model               VARCHAR,
    usage               VARCHAR,
    errors              VARCHAR,
    output_expires_after_seconds BIGINT,
    output_expires_after_anchor  VARCHAR,
    flow_run_id         VARCHAR,
    lease_token         VARCHAR,
    lease_expires_at    DOUBLE
);

CREATE TABLE IF NOT EXISTS batch_chunks (
    batch_id      VARCHAR NOT NULL,
    chunk_index   INTEGER NOT NULL,
    start_offset  BIGINT  NOT NULL,
    end_offset    BIGINT  NOT NULL,
    first_line    INTEGER NOT NULL,
    line_count    INTEGER NOT NULL,
    done          BOOLEAN NOT NULL DEFAULT FALSE,
    completed     INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    usage         VARCHAR,
    model         VARCHAR,
    PRIMARY KEY (batch_id, chunk_index)
);

CREATE TABLE IF NOT EXISTS providers (
    name             VARCHAR PRIMARY KEY,
    base_url         VARCHAR NOT NULL,
    api_key          VARCHAR NOT NULL,
    is_active        BOOLEAN NOT NULL DEFAULT TRUE,
    max_concurrency  INTEGER NOT NULL DEFAULT 64,
    models           VARCHAR,
    is_default       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       BIGINT  NOT NULL
);

-- migration 2
-- `seq`: each file's and batch's place in creation order. `created_at` is
-- whole seconds, so objects made in the same second tie on it; lists sort by
-- (created_at, seq), and a sequence cannot tie. Rows stored before are
-- numbered in (created_at, id) order, the order lists showed them in until
-- now, and the sequence goes on after the last of them (setval is not
-- called on an empty table, whose sequence starts at 1).
-- No NOT NULL: DuckDB cannot add that constraint in the transaction that
-- filled the column; the default gives every insert its number.
CREATE SEQUENCE files_seq START 1;
ALTER TABLE files ADD COLUMN seq BIGINT DEFAULT nextval('files_seq');
UPDATE files SET seq = numbered.n
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM files) AS numbered
WHERE files.id = numbered.id;
SELECT setval('files_seq', seq) FROM files WHERE seq = (SELECT max(seq) FROM files);

CREATE SEQUENCE batches_seq START 1;
ALTER TABLE batches ADD COLUMN seq BIGINT DEFAULT nextval('batches_seq');
UPDATE batches SET seq = numbered.n
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM batches) AS numbered
WHERE batches.id = numbered.id;
SELECT setval('batches_seq', seq) FROM batches WHERE seq = (SELECT max(seq) FROM batches);

-- migration 3
-- Results as data (issue 12). `batch_result_chunks`: one row per chunk whose
-- lines can be read, stamped with `seq` from one sequence when the chunk is
-- checkpointed (or, for a chunk that never ran, when finalize writes its
-- error lines). Chunks finish out of order, so the live-results cursor is a
-- `seq`, not a chunk index: a reader asks for the rows after the last `seq`
-- it saw. Finalize adds where each chunk's lines sit in the final output and
-- error files (byte ranges), for when the parts are gone.
CREATE SEQUENCE result_chunks_seq START 1;
CREATE TABLE IF NOT EXISTS batch_result_chunks (
    batch_id     VARCHAR NOT NULL,
    chunk_index  INTEGER NOT NULL,
    seq          BIGINT  NOT NULL DEFAULT nextval('result_chunks_seq'),
    out_start    BIGINT,
    out_end      BIGINT,
    err_start    BIGINT,
    err_end      BIGINT,
    PRIMARY KEY (batch_id, chunk_index)
);
-- Per-chunk usage by requested model and provider, written with the chunk's
-- checkpoint (once per chunk: a repeated post adds nothing); /admin/usage
-- sums it by key, model, provider and day.
CREATE TABLE IF NOT EXISTS chunk_usage (
    batch_id          VARCHAR NOT NULL,
    chunk_index       INTEGER NOT NULL,
    model             VARCHAR NOT NULL,
    provider          VARCHAR NOT NULL,
    recorded_at       BIGINT  NOT NULL,
    lines             INTEGER NOT NULL,
    succeeded         INTEGER NOT NULL,
    failed            INTEGER NOT NULL,
    input_tokens      BIGINT  NOT NULL,
    output_tokens     BIGINT  NOT NULL,
    cached_tokens     BIGINT  NOT NULL,
    reasoning_tokens  BIGINT  NOT NULL,
    PRIMARY KEY (batch_id, chunk_index, model, provider)
);

-- migration 4
-- Webhooks (issue 13). An endpoint's signing secret is stored sealed with
-- the provider-key Fernet key (storage/secrets.py): it must be recoverable to
-- sign, and a copied database file must not give it away. `api_key_id` NULL:
-- a global endpoint that hears every key's batches. `events`: JSON list.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id          VARCHAR PRIMARY KEY,
    url         VARCHAR NOT NULL,
    events      VARCHAR NOT NULL,
    api_key_id  VARCHAR,
    secret      VARCHAR NOT NULL,
    created_at  BIGINT  NOT NULL,
    deleted_at  BIGINT
);

-- The outbox: one row per event and endpoint, written in the transaction
-- that ends the batch, so an ended batch always has its deliveries queued.
-- The delivery loop sends due rows and marks them delivered or given up.
CREATE TABLE IF NOT EXISTS webhook_outbox (
    event_id         VARCHAR NOT NULL,
    endpoint_id      VARCHAR NOT NULL,
    type             VARCHAR NOT NULL,
    batch_id         VARCHAR NOT NULL,
    created_at       BIGINT  NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  DOUBLE  NOT NULL,
    delivered_at     BIGINT,
    gave_up_at       BIGINT,
    last_error       VARCHAR,
    PRIMARY KEY (event_id, endpoint_id)
);

-- migration 5
-- Control (issue 13): budgets per API key, the spend counted against them per
-- period, what finished chunks taught about characters per token per model
-- (for estimates), and the pause switch of a batch. Tables of their own, so
-- the records of keys and batches stay as they were.
CREATE TABLE IF NOT EXISTS key_budgets (
    api_key_id     VARCHAR PRIMARY KEY,
    max_tokens     BIGINT,
    max_cost_usd   DOUBLE,
    budget_period  VARCHAR
);

-- key_spend: one row per key and UTC day; a month or lifetime budget sums them.
CREATE TABLE IF NOT EXISTS key_spend (
    api_key_id    VARCHAR NOT NULL,
    period_start  BIGINT  NOT NULL,
    tokens        BIGINT  NOT NULL DEFAULT 0,
    cost_usd      DOUBLE  NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, period_start)
);

CREATE TABLE IF NOT EXISTS model_text_stats (
    model         VARCHAR PRIMARY KEY,
    input_chars   BIGINT NOT NULL DEFAULT 0,
    input_tokens  BIGINT NOT NULL DEFAULT 0,
    lines         BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS batch_controls (
    batch_id    VARCHAR PRIMARY KEY,
    paused      BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at  BIGINT  NOT NULL
);

-- migration 6
-- One batch on many hosts (issue 15): a run takes a chunk by claiming it.
-- `claim_token` and `claim_expires_at` are the chunk's lease (the batch's
-- own run claims with its batch lease token, a helper run with a token of
-- its own); a lapsed claim returns the chunk to the pool. `claimed_by` and
-- `done_by` name the flow runs that took the chunk and whose checkpoint was
-- accepted; `stopped` counts the lines that checkpoint left unsent because
-- the batch was told to stop (the batch's run reads it to pick the outcome).
ALTER TABLE batch_chunks ADD COLUMN claim_token VARCHAR;
ALTER TABLE batch_chunks ADD COLUMN claim_expires_at DOUBLE;
ALTER TABLE batch_chunks ADD COLUMN claimed_by VARCHAR;
ALTER TABLE batch_chunks ADD COLUMN done_by VARCHAR;
ALTER TABLE batch_chunks ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0;
