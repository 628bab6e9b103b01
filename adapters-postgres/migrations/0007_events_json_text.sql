-- Metadata and payload are kept as the text the appender wrote (`json`), no longer as `jsonb`.
--
-- The appender writes each as the envelope's own encoding (compact, fields in declaration
-- order), so the relay can send the stored payload text on as it is instead of encoding the
-- event a second time: the published bytes stay exactly what consumers have always received.
-- `jsonb` would have re-ordered and re-spaced the keys. `json` is also cheaper to insert (it is
-- only checked, not converted) and to read back as text. Nothing queries inside these columns;
-- an idempotent retry compares them as jsonb (adapters-postgres/src/append.rs).
--
-- Rows stored before this migration keep jsonb's spelling of their content (same values, other
-- key order and spacing), and the relay sends them so. The change rewrites the table under an
-- exclusive lock: on a large store, run it in a maintenance window.
ALTER TABLE events
    ALTER COLUMN metadata DROP DEFAULT,
    ALTER COLUMN metadata TYPE json USING metadata::json,
    ALTER COLUMN metadata SET DEFAULT '{}'::json,
    ALTER COLUMN payload TYPE json USING payload::json;
