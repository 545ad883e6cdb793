"""An MLflow SQL tracking store written and read without importing MLflow, where that is safe.

Importing MLflow and its SQL store module costs 1.5-5 s of CPU by machine
(``python benchmarks/tracking_write_cost.py``): pandas, FastAPI and MLflow's GenAI
modules load with it. A sweep's tracking process (:mod:`bpexp.tracking_process`)
pays that once per sweep, and with two workers on two cores it is paid out of the
training's time. :class:`DirectSqlTracker` is an :class:`~bpexp.tracking.MlflowTracker`
that serves a sweep's calls from the store's tables with SQLAlchemy alone, through
:class:`~bpexp.tracking_sql.SqlRunWriter` and a few reads, and imports MLflow only
for a call it does not serve (it then behaves exactly as MlflowTracker does).

It serves a store only when MLflow itself would open it as it stands:

- a SQLite file or a PostgreSQL database (the dialects :mod:`bpexp.tracking_sql` is
  tested on), under an installed MLflow of a major version it follows;
- whose schema revision (``alembic_version``) is the head of the installed MLflow's
  migrations, read from their files (:func:`installed_schema_head`): MLflow refuses
  any other revision and says to run ``mlflow db upgrade``, and an empty database
  is one MLflow must create;
- whose tables have exactly the columns of MLflow 3's schema
  (:meth:`SqlRunWriter.for_engine <bpexp.tracking_sql.SqlRunWriter.for_engine>`);
- with workspaces off (``MLFLOW_ENABLE_WORKSPACES``) and no experiment in another
  workspace (MLflow then refuses to open the store);
- unless ``BPEXP_SQL_BATCH_WRITES=0``, which sends everything through MLflow.

What it does itself: find or (on SQLite, where bpexp gives the artifact location)
create the experiment; create, write and end runs; copy artifacts to and from a local
artifact location; find runs by tags and status. The rest (a run of a remote
artifact store, reads of a whole run, reopening a run, a key or value that is not
plain) goes to MLflow. :func:`open_tracker` picks this tracker or MlflowTracker.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from bpexp.errors import ServiceError
from bpexp.tracking import (
    SQL_WRITES_ENV,
    MlflowTracker,
    deleted_experiment_error,
    probe_tracking_uri,
    resolve_tracking_uri,
    sqlite_path,
)

#: MLflow's switch for multi-workspace stores; with it on, experiments are looked up per workspace.
WORKSPACES_ENV = "MLFLOW_ENABLE_WORKSPACES"

#: MLflow's ``MLFLOW_ARTIFACT_LOCATION_MAX_LENGTH`` and its default (mlflow.environment_variables).
ARTIFACT_LOCATION_LENGTH_ENV = "MLFLOW_ARTIFACT_LOCATION_MAX_LENGTH"
MAX_ARTIFACT_LOCATION_LENGTH = 2048

#: The width of ``experiments.name`` in MLflow's schema (VARCHAR(256)); a longer name is MLflow's to judge.
MAX_EXPERIMENT_NAME_LENGTH = 256

_REVISION = re.compile(r"^revision\s*=\s*['\"]([0-9A-Za-z_]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([0-9A-Za-z_]+)['\"]")


@functools.lru_cache(maxsize=1)
def installed_schema_head() -> str | None:
    """The schema revision the installed MLflow expects of a SQL store, read from its migration files.

    MLflow's own ``_get_latest_schema_revision`` asks alembic for the one head of
    ``mlflow/store/db_migrations/versions``; this reads each file's ``revision`` and
    ``down_revision`` lines instead, so that MLflow need not be imported. Returns None
    when MLflow is not installed, a file is not in that form, or there is not exactly
    one head.
    """
    spec = importlib.util.find_spec("mlflow")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)), "store", "db_migrations", "versions")
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in folder.glob("*.py"):
        if path.name == "__init__.py":
            continue
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))  # None, one revision, or a tuple of them (a merge)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _mlflow_major() -> int | None:
    try:
        return int(importlib.metadata.version("mlflow").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


class DirectSqlTracker(MlflowTracker):
    """An :class:`~bpexp.tracking.MlflowTracker` on a SQL store that imports MLflow only for calls it does not serve.

    Build it with :meth:`open`; see the module docstring for what it serves.
    """

    def __init__(self, uri: str, experiment: str | None, engine: Any, writer: Any) -> None:
        super().__init__(uri, experiment, sql_writes=True)
        self.engine = engine
        self._batch_writer = writer

    @classmethod
    def open(cls, uri: str | None, experiment: str | None) -> "DirectSqlTracker | None":
        """A tracker on the store at ``uri`` if it serves it as it stands (see the module docstring), else None.

        Raises:
            ServiceError: the store cannot be reached (within seconds).
        """
        from bpexp.tracking_sql import MLFLOW_MAJORS

        uri = resolve_tracking_uri(uri)
        if os.environ.get(SQL_WRITES_ENV, "1") == "0" or not uri.startswith(("sqlite:///", "postgresql")):
            return None
        if os.environ.get(WORKSPACES_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            return None
        if _mlflow_major() not in MLFLOW_MAJORS:
            return None
        head = installed_schema_head()
        db = sqlite_path(uri)
        if head is None or (db is not None and not db.exists()):
            return None  # MLflow creates a new store's schema
        probe_tracking_uri(uri)
        import sqlalchemy as sa

        from bpexp.tracking_sql import DEFAULT_WORKSPACE, SqlRunWriter

        engine = sa.create_engine(uri)  # a URL without its driver fails the probe above
        try:
            with engine.connect() as connection:
                if not sa.inspect(connection).has_table("alembic_version"):
                    return _dispose(engine)
                if connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() != [head]:
                    return _dispose(engine)  # MLflow names the revision it wants
            writer = SqlRunWriter.for_engine(engine)
            if writer is None or writer.experiments is None:
                return _dispose(engine)
            experiments = writer.experiments
            with engine.connect() as connection:
                elsewhere = connection.execute(
                    sa.select(experiments.c.experiment_id)
                    .where(experiments.c.workspace.is_not(None), experiments.c.workspace != DEFAULT_WORKSPACE).limit(1)
                ).first()
            if elsewhere is not None:
                return _dispose(engine)  # MLflow refuses such a store without workspaces on, and says so
        except sa.exc.SQLAlchemyError:
            return _dispose(engine)  # MLflow opens it or says why not
        return cls(uri, experiment, engine, writer)

    # -- the experiment
    def _ensure_experiment(self) -> str:
        import sqlalchemy as sa

        from bpexp.tracking_sql import ACTIVE, DEFAULT_WORKSPACE

        table = self._batch_writer.experiments
        select = sa.select(table.c.experiment_id, table.c.lifecycle_stage).where(
            table.c.name == self.experiment, table.c.workspace == DEFAULT_WORKSPACE)

        def found() -> str | None:
            with self.engine.connect() as connection:
                row = connection.execute(select).one_or_none()
            if row is not None and row.lifecycle_stage != ACTIVE:
                raise deleted_experiment_error(self.experiment)
            return None if row is None else str(row.experiment_id)

        existing = found()
        if existing is not None:
            return existing
        location = self.artifact_location()
        if (location is None or os.environ.get(ARTIFACT_LOCATION_LENGTH_ENV) or len(location) > MAX_ARTIFACT_LOCATION_LENGTH
                or not 0 < len(self.experiment) <= MAX_EXPERIMENT_NAME_LENGTH):
            return super()._ensure_experiment()  # MLflow picks the location, or judges the name
        now = int(time.time() * 1000)
        try:
            # the row SqlAlchemyStore.create_experiment inserts, with no tags
            with self.engine.begin() as connection:
                created = connection.execute(sa.insert(table).values(
                    name=self.experiment, artifact_location=location, lifecycle_stage=ACTIVE, creation_time=now,
                    last_update_time=now, workspace=DEFAULT_WORKSPACE))
            return str(created.inserted_primary_key[0])
        except sa.exc.IntegrityError:  # another process created it at the same moment
            existing = found()
            if existing is None:
                raise
            return existing

    # -- runs
    def _sql_writer(self, run_id: str) -> Any:
        # any run of the store: the writer checks that it is active, and leaves it to MLflow if not
        return self._batch_writer

    def _local_artifacts(self, run_id: str) -> Path | None:
        """The folder of a run's artifacts when they are kept on this file system, else None."""
        uri = self._open_here.get(run_id)
        if uri is None:
            import sqlalchemy as sa

            runs = self._batch_writer.runs
            with self.engine.connect() as connection:
                uri = connection.execute(sa.select(runs.c.artifact_uri).where(runs.c.run_uuid == run_id)).scalar_one_or_none()
        return local_path(uri)

    def log_artifacts(self, run_id: str, local_dir: str | Path) -> None:
        folder = self._local_artifacts(run_id)
        if folder is None:
            super().log_artifacts(run_id, local_dir)
            return
        # as MLflow's LocalArtifactRepository.log_artifacts: the tree copied, file contents only
        root = Path(local_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for source in sorted(root.rglob("*")):
            target = folder / source.relative_to(root)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)

    def download_artifact(self, run_id: str, path: str, dst_dir: str | Path) -> Path | None:
        """As :meth:`MlflowTracker.download_artifact`.

        Raises:
            FileNotFoundError: the run has no such artifact (kept on this file system).
        """
        folder = self._local_artifacts(run_id)
        if folder is None:
            return super().download_artifact(run_id, path, dst_dir)
        source = folder / path
        if not source.is_file():
            raise FileNotFoundError(f"run {run_id} has no artifact {path!r}")
        target = Path(dst_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target

    def find_runs(self, tags: Mapping[str, str], status: str | None = None) -> list[tuple[str, dict[str, str]]]:
        import sqlalchemy as sa

        from bpexp.tracking_sql import ACTIVE

        runs, tag_table = self._batch_writer.runs, self._batch_writer.tags
        query = sa.select(runs.c.run_uuid).where(runs.c.experiment_id == int(self.experiment_id), runs.c.lifecycle_stage == ACTIVE)
        if status is not None:
            query = query.where(runs.c.status == status)
        for key, value in tags.items():
            tag = tag_table.alias()
            query = query.where(sa.exists().where(tag.c.run_uuid == runs.c.run_uuid, tag.c.key == key, tag.c.value == value))
        # MLflow's search_runs order when none is asked: newest start first, then by id
        query = query.order_by(runs.c.start_time.desc(), runs.c.run_uuid)

        def read() -> list[tuple[str, dict[str, str]]]:
            with self.engine.connect() as connection:
                ids = list(connection.execute(query).scalars())
                found: dict[str, dict[str, str]] = {run_id: {} for run_id in ids}
                for start in range(0, len(ids), 500):  # within SQLite's bound-parameter limit
                    chunk = ids[start:start + 500]
                    for run_id, key, value in connection.execute(
                            sa.select(tag_table.c.run_uuid, tag_table.c.key, tag_table.c.value)
                            .where(tag_table.c.run_uuid.in_(chunk))):
                        found[run_id][key] = value
            return list(found.items())

        return self._call(read, "searching runs")


def local_path(uri: str | None) -> Path | None:
    """The folder of a ``file:///`` URI or an absolute path, as MLflow's ``local_file_uri_to_path`` reads it; else None."""
    if not uri:
        return None
    if uri.startswith("file://"):
        parsed = urllib.parse.urlparse(uri)
        if parsed.netloc or parsed.query or parsed.fragment:
            return None
        return Path(urllib.request.url2pathname(parsed.path))
    if uri.startswith("/") and not uri.startswith("//"):
        return Path(uri)
    return None


def _dispose(engine: Any) -> None:
    """Close the engine's connections; None, for :meth:`DirectSqlTracker.open` to return."""
    engine.dispose()
    return None


def pick_tracker(uri: str | None, experiment: str | None) -> MlflowTracker:
    """A :class:`DirectSqlTracker` for ``uri`` where it serves the store as it stands, else an MlflowTracker; not checked.

    A store that cannot be reached gets an MlflowTracker, whose ``check`` says so.
    """
    try:
        direct = DirectSqlTracker.open(uri, experiment)
    except ServiceError:
        direct = None
    return direct or MlflowTracker(uri, experiment)


def open_tracker(uri: str | None, experiment: str | None) -> MlflowTracker:
    """:func:`pick_tracker`'s tracker for ``uri``, checked.

    Raises:
        ServiceError: the store cannot be reached, or its experiment is deleted.
    """
    tracker = pick_tracker(uri, experiment)
    tracker.check()
    return tracker
