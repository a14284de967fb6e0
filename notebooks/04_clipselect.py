# Databricks notebook source
# MAGIC %md
# MAGIC # clipsift: CLIP-powered selection of a labelled dataset
# MAGIC
# MAGIC Runs the same `clipsift.jobs.clipselect.run(spark, cfg)` as `clipsift clipselect`: trains the linear adapters on the
# MAGIC frozen embeddings (mini-batches streamed from Spark), saves them with provenance, and writes `sas`, `sds`, their
# MAGIC min-max forms and `clipselect_score` to the output table (partitioned by `run_id`) plus `<output>_runs`. Then
# MAGIC `clipsift.jobs.select.run` creates the views of `rule: clipselect` selections, whose λ is chosen at select time.
# MAGIC Setup as in `01_score`.
# MAGIC
# MAGIC **Widgets.** `config`: a clipselect YAML (`examples/clipselect.yaml`); `select_config`: a select YAML over its
# MAGIC output (`examples/select_clipselect.yaml`); `overrides`: `key.path=value` items separated by `;`.

# COMMAND ----------

import json

from pyspark.sql import functions as F

from clipsift.jobs import clipselect, select
from clipsift.jobs.config import ClipSelectConfig, SelectConfig, load, to_dict

# COMMAND ----------

dbutils.widgets.text("config", "../examples/clipselect.yaml", "clipselect config (YAML)")
dbutils.widgets.text("select_config", "../examples/select_clipselect.yaml", "select config (YAML)")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

overrides = [item.strip() for item in dbutils.widgets.get("overrides").split(";") if item.strip()]
cfg = load(ClipSelectConfig, dbutils.widgets.get("config"), overrides)
print(json.dumps(to_dict(cfg), indent=2))

# COMMAND ----------

result = clipselect.run(spark, cfg)
print(
    f"run {result.run_id}: {result.rows_in} rows in, {result.rows_out} out, by status {result.by_status}, "
    f"adapter training loss {result.final_loss}, {result.seconds:.0f}s"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The scores
# MAGIC
# MAGIC Low `sas` flags rows whose image disagrees with its label (label noise, corrupted images); `sds` is high for
# MAGIC rows far from the rest of their class.

# COMMAND ----------

scores = spark.read.table(cfg.output.table) if cfg.output.table else spark.read.format("delta").load(cfg.output.path)
run = scores.where(F.col("run_id") == result.run_id)
display(run.groupBy("status").count())
display(run.where(F.col("status") == "ok").orderBy("sas").select("uid", "label", "sas", "sds", "clipselect_score"))
display(run.where(F.col("status") == "ok").groupBy("label").agg(F.avg("sas"), F.avg("sds"), F.count("*")))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Selections as SQL views

# COMMAND ----------

select_cfg = load(SelectConfig, dbutils.widgets.get("select_config"), [f"run_id={result.run_id}"])
for r in select.run(spark, select_cfg):
    print(f"{r.view}: {r.rows} of {r.pool_rows} rows, cut-offs {json.dumps(r.cutoffs, default=str)}")
