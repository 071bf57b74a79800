"""The store's schema, as an ordered list of migrations.

A database records the highest migration applied in `schema_version`; opening it applies the newer ones
in order, each in its own transaction. To change the schema, append a Migration — never edit one that
has shipped (databases in the field already ran it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "devices, artifacts, measurements, evaluations, runs, run members and run events", (
        # One row per physical device (the agent's stable device id); `kind` and `description` are the
        # latest seen. Several agents on one machine share one device id.
        """CREATE TABLE devices (
            id          TEXT PRIMARY KEY,
            label       TEXT NOT NULL DEFAULT '',
            kind        TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '{}',   -- JSON: the agent's Describe answer
            first_seen  REAL NOT NULL,                -- unix seconds
            last_seen   REAL NOT NULL
        )""",
        "CREATE INDEX devices_by_kind ON devices (kind, last_seen)",
        # What was measured: content-addressed model files (or torch specs) and what they were built from.
        """CREATE TABLE artifacts (
            sha256     TEXT PRIMARY KEY CHECK (length(sha256) = 64),
            format     TEXT NOT NULL,                 -- onnx | tflite | spec
            supernet   TEXT,                          -- space id; NULL for a model that came as a file
            config     TEXT,                          -- canonical JSON of the sub-network's config
            size       INTEGER NOT NULL,              -- bytes
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX artifacts_by_config ON artifacts (supernet, config)",
        """CREATE TABLE measurements (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id     TEXT NOT NULL REFERENCES devices (id),
            device_kind   TEXT NOT NULL,              -- the unit of interchangeability, e.g. rpi4-litert-1t
            agent         TEXT NOT NULL DEFAULT '',   -- inventory name of the agent that measured
            artifact      TEXT NOT NULL REFERENCES artifacts (sha256),
            runtime       TEXT NOT NULL,              -- litert | onnxruntime | torch
            settings      TEXT NOT NULL,              -- canonical JSON: runtime, threads, stopping rule, seed
            settings_hash TEXT NOT NULL,              -- sha256 of `settings`: the dedup key's last part
            stats         TEXT NOT NULL DEFAULT '{}', -- JSON latency_ms: n, mean, median, p90, p99, std, ...
            memory        TEXT NOT NULL DEFAULT '{}', -- JSON: peak_bytes, baseline_rss_bytes, ...
            env           TEXT NOT NULL DEFAULT '{}', -- JSON: before, after, throttled
            detail        TEXT NOT NULL DEFAULT '{}', -- JSON: runtime version, inputs, load_ms, times, label
            ok            INTEGER NOT NULL CHECK (ok IN (0, 1)),
            error         TEXT,
            stale         INTEGER NOT NULL DEFAULT 0 CHECK (stale IN (0, 1)),  -- superseded or drifted
            created_at    REAL NOT NULL
        )""",
        # The backstop against recording one job twice: one current successful row per dedup key.
        """CREATE UNIQUE INDEX measurements_current
            ON measurements (artifact, device_kind, runtime, settings_hash) WHERE ok = 1 AND stale = 0""",
        "CREATE INDEX measurements_by_kind ON measurements (device_kind, runtime, ok, stale)",
        "CREATE INDEX measurements_by_device ON measurements (device_id, created_at)",
        """CREATE TABLE evaluations (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            supernet   TEXT NOT NULL,
            config     TEXT NOT NULL,                 -- canonical JSON
            metric     TEXT NOT NULL,                 -- e.g. top1_accuracy
            value      REAL NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX evaluations_lookup ON evaluations (supernet, metric, config)",
        """CREATE TABLE runs (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            name       TEXT UNIQUE,                   -- optional: resume a run by name
            tactic     TEXT NOT NULL,
            settings   TEXT NOT NULL DEFAULT '{}',
            state      TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'failed')),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE run_members (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            config     TEXT NOT NULL,                 -- canonical JSON
            objectives TEXT NOT NULL,                 -- JSON {objective name: value}
            source     TEXT NOT NULL CHECK (source IN ('measured', 'predicted')),
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX run_members_by_run ON run_members (run_id, source, id)",
        # Anything a run reports over time, e.g. kind 'hypervolume' with {"n_real": 12, "value": 0.41}.
        """CREATE TABLE run_events (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            kind       TEXT NOT NULL,
            payload    TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX run_events_by_run ON run_events (run_id, kind, id)",
    )),
    Migration(2, "calibrations and reference rounds", (
        # One row per predictor fit of a (space, device kind): why it was made and what came out.
        """CREATE TABLE calibrations (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            space         TEXT NOT NULL,
            device_kind   TEXT NOT NULL,
            runtime       TEXT NOT NULL,
            settings      TEXT NOT NULL,              -- canonical JSON of the measurement settings fitted on
            settings_hash TEXT NOT NULL,
            reason        TEXT NOT NULL CHECK (reason IN ('requested', 'drift', 'version')),
            result        TEXT NOT NULL DEFAULT '{}', -- JSON: sample, metrics per metric, predictor files, plot,
                                                      -- rows used and excluded, the evidence that caused it
            created_at    REAL NOT NULL
        )""",
        "CREATE INDEX calibrations_lookup ON calibrations (space, device_kind, id)",
        # The fixed reference sub-networks of a space measured on one agent, at one time. A check round is
        # compared with the agent's latest baseline round; a change makes the round the new baseline.
        """CREATE TABLE reference_rounds (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            space         TEXT NOT NULL,
            device_kind   TEXT NOT NULL,
            agent         TEXT NOT NULL,              -- inventory name: drift is judged per agent
            device_id     TEXT NOT NULL DEFAULT '',
            runtime       TEXT NOT NULL,
            settings_hash TEXT NOT NULL,
            reference     TEXT NOT NULL,              -- digest of the reference set: only equal ones compare
            role          TEXT NOT NULL CHECK (role IN ('baseline', 'check')),
            entries       TEXT NOT NULL DEFAULT '[]', -- JSON per reference config: key, ok, median_ms,
                                                      -- rel_ci_half_width, throttled, runtime_version, measurement_id
            platform      TEXT NOT NULL DEFAULT '{}', -- JSON: runtime_version, agent_version, os
            verdict       TEXT NOT NULL DEFAULT '{}', -- JSON: the comparison with the baseline
            created_at    REAL NOT NULL
        )""",
        "CREATE INDEX reference_rounds_lookup ON reference_rounds (space, device_kind, agent, role, id)",
    )),
    # Accuracy evaluations were all stored as "accuracy", whichever evaluator made them; each evaluator now keeps
    # its own (search.live.accuracy_metric: "accuracy" for a space's built-in one, "accuracy:MODULE:CALLABLE" for
    # a user's). An old row goes to the one evaluator the runs on its space with an accuracy objective used; where
    # they used several, or none is recorded, it is set aside as "accuracy:unattributed", read by no evaluator.
    Migration(3, "accuracy evaluations credited to the evaluator that made them", (
        """UPDATE evaluations SET metric = coalesce((
            SELECT CASE WHEN count(DISTINCT coalesce(json_extract(r.settings, '$.accuracy'), '')) != 1 THEN NULL
                        WHEN max(coalesce(json_extract(r.settings, '$.accuracy'), '')) = '' THEN 'accuracy'
                        ELSE 'accuracy:' || max(json_extract(r.settings, '$.accuracy')) END
            FROM runs AS r
            WHERE json_extract(r.settings, '$.space') = evaluations.supernet
              AND EXISTS (SELECT 1 FROM json_each(r.settings, '$.objectives') AS o WHERE o.value LIKE 'accuracy:%')
        ), 'accuracy:unattributed')
        WHERE metric = 'accuracy'""",
    )),
)
