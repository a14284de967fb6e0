# Databricks notebook source
# MAGIC %md
# MAGIC # clipsift 1/3: score a pool
# MAGIC
# MAGIC Runs the same `clipsift.jobs.score.run(spark, cfg)` as `clipsift score`, on this notebook's `spark`. Writes the score
# MAGIC table (`output` of the config, e.g. `clipsift.scores`) and its runs table `<output>_runs`.
# MAGIC
# MAGIC **Setup.** `jobs` and `udfs` must be importable: open this notebook from a Git folder of the repository (its
# MAGIC root is on `sys.path`), or install the wheel on the cluster without its dependencies (the runtime has
# MAGIC pyspark and Delta):
# MAGIC `%pip install --no-deps /Volumes/<catalog>/<schema>/<volume>/clipsift-0.1.0-py3-none-any.whl`.
# MAGIC
# MAGIC **Widgets.** `config`: a score YAML on a path the driver reads (`/Workspace/...`, `/Volumes/...`), e.g.
# MAGIC `examples/score.yaml`. `overrides`: `key.path=value` items separated by `;`, as `--set` takes them
# MAGIC (e.g. `negclip.rounds=5; input.path=/Volumes/main/datacomp/medium/metadata`).
# MAGIC The config's `spark` section is ignored here: the cluster's settings apply.

# COMMAND ----------

import json

from pyspark.sql import functions as F

from clipsift.jobs import io, score
from clipsift.jobs.config import ScoreConfig, load, to_dict

# COMMAND ----------

dbutils.widgets.text("config", "../examples/score.yaml", "Score config (YAML)")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

config_path = dbutils.widgets.get("config")
overrides = [item.strip() for item in dbutils.widgets.get("overrides").split(";") if item.strip()]
cfg = load(ScoreConfig, config_path, overrides)
print(json.dumps(to_dict(cfg), indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC The run creates the output table's schema when it does not exist yet (catalog tables only).

# COMMAND ----------

result = score.run(spark, cfg)
print(
    f"run {result.run_id}: {result.rows_in} rows in, {result.rows_out} rows out, "
    f"by status {result.by_status}, {result.seconds:.0f}s"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runs table
# MAGIC One row per run: the config, lineage (teacher, τ, B, K, seed, grouping, targets with sha256, code version),
# MAGIC row counts by status and timings. `clipsift select` takes the latest run unless its config names one.

# COMMAND ----------

runs = io.read_table_ref(spark, io.sibling(cfg.output, "runs"))
display(runs.orderBy(F.col("started_at").desc()))

# COMMAND ----------

# MAGIC %md
# MAGIC ## This run: rows by status
# MAGIC Every input row is in the score table once: `ok` with its scores, or another status with the reason in `error`.

# COMMAND ----------

this_run = io.read_table_ref(spark, cfg.output).where(F.col("run_id") == result.run_id)
display(
    this_run.groupBy("status")
    .agg(F.count("*").alias("rows"), F.first("error", ignorenulls=True).alias("example_error"))
    .orderBy(F.col("rows").desc())
)
