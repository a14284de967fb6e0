"""The one way clipsift gets a SparkSession: reuse the active one, else build one with Delta configured."""

from __future__ import annotations

import glob
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import pandas  # noqa: F401  # imported up front: pyspark imports it lazily, and a late first import failed mid-run
from pyspark.sql import SparkSession

import clipsift
from clipsift.jobs.config import ConfigError, JobConfig, from_argv

C = TypeVar("C", bound=JobConfig)
R = TypeVar("R")

#: Set to 1 (``clipsift --verbose``) to keep Spark's own INFO log.
VERBOSE_ENV = "CLIPSIFT_VERBOSE"

#: Fault injection for the faults tier (tests/faults): ``CLIPSIFT_FAILPOINT=<name>`` kills the process at that point.
FAILPOINT_ENV = "CLIPSIFT_FAILPOINT"

#: The master of a session built here when nothing chose one: all cores, each task tried up to 4 times.
LOCAL_MASTER = "local[*, 4]"

#: Folder (or glob) of the Delta jars; set by `make setup`. Without it the jars come from spark.jars.packages.
JARS_ENV = "CLIPSIFT_JARS"

#: Tasks Delta uses to read a table's log in a session built here (Delta's default, 50, makes every query on a
#: small table launch 50 tasks). A cluster's or the caller's own setting wins.
LOCAL_SNAPSHOT_PARTITIONS = max(2, os.cpu_count() or 2)

#: The driver's log profile in a session clipsift builds itself: Spark's at WARN, less the start-up notices.
LOG_PROFILE = Path(clipsift.__file__).with_name("log4j2.properties")

#: Spark's default shuffle partitions: a session still at this value has not chosen, and a job sizes it to its input.
SPARK_DEFAULT_SHUFFLE_PARTITIONS = "200"

#: Input bytes per shuffle partition when a job sizes them (Spark's advisory partition size), and the fewest.
SHUFFLE_PARTITION_BYTES = 128 * 1024 * 1024
MIN_SHUFFLE_PARTITIONS = 8

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def get_spark(
    app_name: str = "clipsift", conf: Mapping[str, str] | None = None, local_catalog: str | None = None
) -> SparkSession:
    """Return the active SparkSession, or build one with Delta Lake configured.

    The master is spark-submit's, Databricks', or the ``spark.master`` setting; when none chose one,
    :data:`LOCAL_MASTER` (local, with task retries). A Spark SQL setting Spark refuses is a :class:`ConfigError`.
    Delta's jars come from ``$CLIPSIFT_JARS`` (a folder or glob of jars, as ``make setup`` fetches),
    else from ``spark.jars.packages`` matching the installed delta-spark (needs Maven Central), unless
    the caller's ``conf`` or the cluster already provides them.

    Args:
        app_name: Spark application name.
        conf: extra ``spark.*`` settings applied when a new session is built.
        local_catalog: a folder for a persistent local catalog (:func:`local_catalog_conf`), used when the session
            built here runs locally and ``conf`` chooses no catalog.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = dict(DELTA_CONF)
    quiet = os.environ.get(VERBOSE_ENV) != "1"
    if quiet:
        settings["spark.log.level"] = "WARN"  # Spark's INFO log is thousands of lines; `clipsift --verbose` keeps it
    settings.update(_delta_jars())
    settings.update(conf or {})
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit or a shell started the JVM: its conf decides
    if quiet and not submitted:
        settings.update(_log_profile(settings.get("spark.driver.extraJavaOptions")))
    if not submitted and "--master" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        # Plain local[*] tries a task once; a task that fails on purpose (a broken model, a shard read error) is
        # then never retried locally. On a cluster, spark.task.maxFailures (4) does this.
        settings.setdefault("spark.master", LOCAL_MASTER)
    local = str(settings.get("spark.master", "local")).startswith("local")
    if local and not submitted:
        settings.setdefault("spark.databricks.delta.snapshotPartitions", str(LOCAL_SNAPSHOT_PARTITIONS))
    if local_catalog and local and not submitted and "spark.sql.catalogImplementation" not in settings:
        settings.update(local_catalog_conf(local_catalog, settings.get("spark.driver.extraJavaOptions")))
    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    try:
        session.conf.get("spark.sql.shuffle.partitions")  # builds the SQL session state: checks the SQL settings
    except Exception as exc:
        session.stop()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        named = re.search(r'config "([^"]+)"', first)
        key = f"spark.conf.{named.group(1)}" if named else "spark.conf"
        raise ConfigError(key, f"Spark refused the session settings: {first}") from None
    return session


def failpoint(name: str) -> None:
    """Die here, as ``kill -9`` would (no cleanup, no ``finally``), when ``$CLIPSIFT_FAILPOINT`` is ``name``.

    The points sit where a crash is hardest to survive (between two commits, after a view before its record); the
    faults tier kills a job at each and checks that running it again leaves the tables as an unbroken run would.
    """
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def local_catalog_conf(folder: str, java_options: str | None = None) -> dict[str, str]:
    """Settings of a local catalog kept in ``folder``: Spark's Hive-compatible metastore (embedded Derby, one
    process at a time) in ``folder/metastore_db`` and managed tables in ``folder/warehouse``."""
    root = os.path.abspath(folder)
    os.makedirs(root, exist_ok=True)
    derby = f"-Dderby.system.home={root}"
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": os.path.join(root, "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={root}/metastore_db;create=true",
        "spark.driver.extraJavaOptions": f"{java_options} {derby}" if java_options else derby,
    }


def _log_profile(java_options: str | None) -> dict[str, str]:
    """The driver's JVM options with :data:`LOG_PROFILE` as its log profile, unless the options name one already.

    Only for a driver JVM that clipsift starts itself (Python's ``SparkSession.builder``); under spark-submit, a
    shell or a cluster the JVM is running already and its own profile stays.
    """
    options = java_options or ""
    if "log4j2.configurationFile" in options or not LOG_PROFILE.is_file():
        return {}
    profile = f"-Dlog4j2.configurationFile={LOG_PROFILE.as_uri()}"
    return {"spark.driver.extraJavaOptions": f"{options} {profile}".strip()}


def _delta_jars() -> dict[str, str]:
    where = os.environ.get(JARS_ENV)
    if where:
        pattern = os.path.join(where, "*.jar") if os.path.isdir(where) else where
        jars = sorted(glob.glob(pattern))
        if not jars:
            raise FileNotFoundError(f"${JARS_ENV}={where} holds no .jar files; run `make setup` or unset it")
        return {"spark.jars": ",".join(jars)}
    try:
        version = metadata.version("delta-spark")
    except metadata.PackageNotFoundError:
        return {}
    return {"spark.jars.packages": f"io.delta:delta-spark_2.13:{version}"}


@contextmanager
def job_description(spark: SparkSession, text: str) -> Iterator[None]:
    """Label the Spark jobs started inside the block (Spark UI "Description" column).

    Classic Spark only: under Spark Connect / serverless there is no SparkContext, and the label is skipped.
    """
    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect raises on any SparkContext access
        yield
        return
    previous = sc.getLocalProperty("spark.job.description")
    sc.setJobDescription(text)
    try:
        yield
    finally:
        sc.setJobDescription(previous)  # type: ignore[arg-type]  # None clears it


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set runtime SQL settings for the block, then restore what was there."""
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def shuffle_partitions(input_bytes: int) -> int:
    """Shuffle partitions for a job reading ``input_bytes``: one per :data:`SHUFFLE_PARTITION_BYTES`, at least
    :data:`MIN_SHUFFLE_PARTITIONS` (a 1 MB table gets 8 tasks per shuffle, not 200; a 1 TB one gets 8,192)."""
    return max(MIN_SHUFFLE_PARTITIONS, -(-max(0, input_bytes) // SHUFFLE_PARTITION_BYTES))


@contextmanager
def sized_shuffle(spark: SparkSession, input_bytes: int) -> Iterator[int]:
    """Run the block with shuffle partitions sized to the job's input (:func:`shuffle_partitions`), unless the
    session chose its own (any value but Spark's default); yields the partitions in force."""
    current = spark.conf.get("spark.sql.shuffle.partitions")
    if current != SPARK_DEFAULT_SHUFFLE_PARTITIONS:
        yield int(str(current))
        return
    n = shuffle_partitions(input_bytes)
    with session_conf(spark, {"spark.sql.shuffle.partitions": str(n)}):
        yield n


class Progress:
    """A job's steps, named in the Spark UI (job descriptions) and printed on stderr as they end: the step, its
    rows, the time it took and rows/s, e.g. ``clipsift score: write: 100,000 rows in 41.2s (2,427 rows/s)``."""

    def __init__(self, spark: SparkSession, job: str) -> None:
        self.spark = spark
        self.job = job
        self.started = time.time()

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, int]]:
        """Run a step; set ``["rows"]`` on the yielded dict to report its row count."""
        counts: dict[str, int] = {}
        began = time.time()
        with job_description(self.spark, f"{self.job}: {name}"):
            yield counts
        seconds = time.time() - began
        rows = counts.get("rows")
        rate = f" ({rows / seconds:,.0f} rows/s)" if rows and seconds > 0 else ""
        done = f"{rows:,} rows in {seconds:.1f}s{rate}" if rows is not None else f"{seconds:.1f}s"
        print(f"{self.job}: {name}: {done} [{time.time() - self.started:.0f}s]", file=sys.stderr, flush=True)


def job_main(
    prog: str,
    config: type[C],
    run: Callable[[SparkSession, C], R],
    summary: Callable[[R], str],
    argv: Sequence[str] | None,
) -> int:
    """A job's entry point: its config from ``--config FILE [--set key=value ...]``, run on :func:`get_spark`'s
    session, ``summary`` of the result printed. A bad config or a missing path is one line on stderr naming the
    key or file, and exit status 2, before any Spark work.
    """
    try:
        cfg = from_argv(config, prog, argv)
        result = run(get_spark(cfg.spark.app_name, cfg.spark.conf, cfg.spark.local_catalog), cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0
