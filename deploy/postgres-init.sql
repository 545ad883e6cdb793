-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d).
-- A second database for bpexp's Optuna studies, batch ledger and schedule: MLflow and
-- Optuna each keep their schema version in a table named alembic_version, so they
-- cannot share MLflow's database (Optuna then refuses the "incompatible" schema).
CREATE DATABASE bpexp_studies;
