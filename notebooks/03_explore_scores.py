# Databricks notebook source
# MAGIC %md
# MAGIC # clipsift 3/3: explore the scores
# MAGIC
# MAGIC Score distributions by status, CLIPScore against negCLIPLoss by rank, and the captions behind the scores, for
# MAGIC one run of a score table. Everything is computed in Spark; only aggregates and `LIMIT`ed rows reach the driver.
# MAGIC Setup as in `01_score`.
# MAGIC
# MAGIC **Widgets.** `config`: the select YAML (its `scores` table and `run_id` are used). `run_id`: overrides the
# MAGIC config's; empty: the config's, else the latest run. `metadata`: the DataComp metadata folder holding the
# MAGIC captions (`<shard>.parquet` with `uid`, `text`); empty: the run's input as recorded in the runs table.

# COMMAND ----------

from pyspark.sql import functions as F

from clipsift.jobs import io, select
from clipsift.jobs.config import SelectConfig, load
from clipsift.udfs.schemas import STATUS
from clipsift.udfs.score import NEGCLIP_COLUMNS

# COMMAND ----------

dbutils.widgets.text("config", "../examples/select.yaml", "Select config (YAML)")
dbutils.widgets.text("run_id", "", "Run id (empty: latest)")
dbutils.widgets.text("metadata", "", "DataComp metadata folder (empty: the run's input)")

# COMMAND ----------

cfg = load(SelectConfig, dbutils.widgets.get("config"))
run_id = dbutils.widgets.get("run_id") or cfg.run_id or select.latest_run(spark, cfg.scores)
scores = io.read_table_ref(spark, cfg.scores).where(F.col("run_id") == run_id)
score_columns = [c for c in scores.columns if c in ("clip_score", *NEGCLIP_COLUMNS) or c.startswith("normsim_")]
normsim_inf = [c for c in score_columns if c.startswith("normsim_inf_")]
scores.createOrReplaceTempView("run_scores")
print(f"{cfg.scores.label}, run {run_id}: score columns {score_columns}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The run's lineage

# COMMAND ----------

runs = io.read_table_ref(spark, io.sibling(cfg.scores, "runs")).where(F.col("run_id") == run_id)
display(runs.select("run_id", "started_at", "seconds", "input", "rows", "rows_by_status", "lineage", "code_version"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Distributions by status
# MAGIC Rows that are not `ok` carry no scores (their reason is in `error`); their embedding norms show why.
# MAGIC Quantiles are `percentile_approx` at 1%, 25%, 50%, 75%, 99%.

# COMMAND ----------

quantiles = [0.01, 0.25, 0.5, 0.75, 0.99]
summary = scores.groupBy("status").agg(
    F.count("*").alias("rows"),
    *[F.percentile_approx(c, quantiles, 10000).alias(f"{c}_q") for c in [*score_columns, "image_norm", "text_norm"]],
    F.first("error", ignorenulls=True).alias("example_error"),
)
display(summary.orderBy(F.col("rows").desc()))

# COMMAND ----------

# MAGIC %md
# MAGIC Histograms of the `ok` rows: 50 equal-width bins per score between its 0.1% and 99.9% quantiles
# MAGIC (choose a bar chart with `bin` on the x-axis, `rows` as the value and `score` as the facet).

# COMMAND ----------

ok = scores.where(F.col("status") == STATUS.OK)
long = ok.unpivot("uid", score_columns, "score", "value").where(F.col("value").isNotNull())
ranges = long.groupBy("score").agg(F.percentile_approx("value", [0.001, 0.999], 10000).alias("range"))
histogram = (
    long.join(F.broadcast(ranges), "score")
    .withColumn("bin", F.width_bucket("value", F.col("range")[0], F.col("range")[1], F.lit(50)))
    .groupBy("score", "bin")
    .agg(F.count("*").alias("rows"), F.min("value").alias("from"), F.max("value").alias("to"))
)
display(histogram.orderBy("score", "bin"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## CLIPScore against negCLIPLoss, by rank
# MAGIC Each `ok` row's decile (0 = lowest 10%, 9 = highest) under each score, from `percentile_approx` cut points;
# MAGIC the 10 × 10 table shows where the two rankings disagree (a heat map of `rows` over the two deciles).

# COMMAND ----------

deciles = [i / 10 for i in range(1, 10)]
cuts = ok.agg(
    F.percentile_approx("clip_score", deciles, 10000).alias("clip_cuts"),
    F.percentile_approx("negclip_loss", deciles, 10000).alias("ncl_cuts"),
)
ranked = (
    ok.where(F.col("negclip_loss").isNotNull())
    .crossJoin(F.broadcast(cuts))
    .withColumn("clip_decile", F.size(F.filter("clip_cuts", lambda q: q < F.col("clip_score"))))
    .withColumn("ncl_decile", F.size(F.filter("ncl_cuts", lambda q: q < F.col("negclip_loss"))))
    .drop("clip_cuts", "ncl_cuts")
)
ranked.createOrReplaceTempView("run_deciles")
display(ranked.groupBy("clip_decile", "ncl_decile").count().orderBy("clip_decile", "ncl_decile"))

# COMMAND ----------

# MAGIC %sql
# MAGIC -- Agreement of the two rankings: correlation of the scores and of their deciles, and the share of
# MAGIC -- CLIPScore's top 30% (deciles 7-9) that negCLIPLoss also puts in its top 30%.
# MAGIC SELECT
# MAGIC   count(*) AS `rows`,
# MAGIC   corr(clip_score, negclip_loss) AS pearson_scores,
# MAGIC   corr(clip_decile, ncl_decile) AS pearson_deciles,
# MAGIC   avg(CASE WHEN ncl_decile >= 7 THEN 1 ELSE 0 END) FILTER (WHERE clip_decile >= 7) AS clip_top30_kept_by_ncl
# MAGIC FROM run_deciles

# COMMAND ----------

# MAGIC %md
# MAGIC ## Captions
# MAGIC The score table keeps each pair's caption (`text`, from the pool's metadata). With the `metadata` widget set,
# MAGIC captions come from those DataComp parquet shards (`uid`, `text`) instead, joined on `uid`; only `*.parquet`
# MAGIC files are read: the folder also holds the `.npz` embeddings.

# COMMAND ----------

metadata = dbutils.widgets.get("metadata")
if metadata:
    captions = spark.read.option("pathGlobFilter", "*.parquet").parquet(metadata).select("uid", "text")
    with_text = ranked.drop("text").join(captions, "uid")
else:
    with_text = ranked
with_text.createOrReplaceTempView("run_captions")
print(f"captions from {metadata or 'the score table'}")

# COMMAND ----------

# MAGIC %md
# MAGIC Highest negCLIPLoss, highest CLIPScore, and (for each target) highest NormSim_inf.

# COMMAND ----------

shown = ["uid", "text", "clip_score", "negclip_loss", *normsim_inf]
display(with_text.orderBy(F.col("negclip_loss").desc()).select(*shown).limit(50))

# COMMAND ----------

display(with_text.orderBy(F.col("clip_score").desc()).select(*shown).limit(50))

# COMMAND ----------

for column in normsim_inf:
    display(with_text.orderBy(F.col(column).desc()).select(*shown).limit(50))

# COMMAND ----------

# MAGIC %md
# MAGIC The most frequent captions among rows in CLIPScore's top 30% that negCLIPLoss ranks below its top 30%:
# MAGIC generic and duplicated captions, which negCLIPLoss demotes (ALGORITHMS.md §1.3).

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT text, count(*) AS `rows`, avg(clip_score) AS avg_clip_score, avg(negclip_loss) AS avg_negclip_loss,
# MAGIC        avg(clip_decile) AS avg_clip_decile, avg(ncl_decile) AS avg_ncl_decile
# MAGIC FROM run_captions
# MAGIC WHERE clip_decile >= 7 AND ncl_decile < 7
# MAGIC GROUP BY text
# MAGIC ORDER BY `rows` DESC
# MAGIC LIMIT 50
