# Databricks notebook source
# MAGIC %md
# MAGIC # clipsift 0/3: embed a pool
# MAGIC
# MAGIC Runs the same `clipsift.jobs.embed.run(spark, cfg)` as `clipsift embed`, on this notebook's `spark`: images and captions
# MAGIC (img2dataset WebDataset shards, or a table of image bytes or image paths) through an open_clip teacher, into
# MAGIC the embedding table (`output` of the config, e.g. `clipsift.embeddings`: one row per uid and model), its
# MAGIC rejects table `<output>_rejects` and its runs table `<output>_runs`. A rerun embeds only what the table lacks
# MAGIC for the model, so after a failure (or with new shards) run it again. `01_score` then scores the output.
# MAGIC
# MAGIC **Setup.** As in `01_score` (a Git folder, or the wheel installed with `--no-deps`), on GPU compute with a
# MAGIC Databricks Runtime ML (GPU), which brings torch and torchvision; open_clip comes from PyPI:
# MAGIC `%pip install open_clip_torch` (notebook-scoped libraries reach the executors too). The model's weights must be
# MAGIC where every executor reads them: `model.cache_dir` on a volume (filled on the first run; offline clusters:
# MAGIC download them there once and set `HF_HUB_OFFLINE=1` in the cluster's environment variables), or a local
# MAGIC checkpoint file in `model.pretrained`.
# MAGIC
# MAGIC **Widgets.** `config`: an embed YAML on a path the driver reads (`/Workspace/...`, `/Volumes/...`), e.g.
# MAGIC `examples/embed.yaml`. `overrides`: `key.path=value` items separated by `;`, as `--set` takes them
# MAGIC (e.g. `embed.image_batch_size=512; input.path=/Volumes/main/datacomp/medium/shards`).
# MAGIC The config's `spark` section is ignored here: the cluster's settings apply.

# COMMAND ----------

import json

from pyspark.sql import Window
from pyspark.sql import functions as F

from clipsift.jobs import embed, io
from clipsift.jobs.config import EmbedConfig, ScoreConfig, load, to_dict

# COMMAND ----------

dbutils.widgets.text("config", "../examples/embed.yaml", "Embed config (YAML)")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

config_path = dbutils.widgets.get("config")
overrides = [item.strip() for item in dbutils.widgets.get("overrides").split(";") if item.strip()]
cfg = load(EmbedConfig, config_path, overrides)
print(json.dumps(to_dict(cfg), indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC The output table's schema must exist before the first run (catalog tables only).

# COMMAND ----------

if cfg.output.table is not None and "." in cfg.output.table:
    schema = cfg.output.table.rsplit(".", 1)[0]
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {'.'.join(io.quote_ident(p) for p in schema.split('.'))}")

# COMMAND ----------

result = embed.run(spark, cfg)
print(embed.summary(result))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rows by status
# MAGIC All of the model's rows in the embedding table (every run), with the rows this run wrote. `ok` rows have both
# MAGIC embeddings; any other status names why the image (`image_status`) or the caption (`text_status`) has none, and
# MAGIC `error` says more. `unreadable_file` and `encode_failed` rows are embedded again by the next run
# MAGIC (`embed.retry_failed`); the other statuses are properties of the data.

# COMMAND ----------

embeddings = io.read_table_ref(spark, cfg.output).where(F.col("model_id") == result.model_id)
display(
    embeddings.groupBy("status", "image_status", "text_status")
    .agg(
        F.count("*").alias("rows"),
        F.sum((F.col("run_id") == result.run_id).cast("long")).alias("rows_this_run"),
        F.first("error", ignorenulls=True).alias("example_error"),
    )
    .orderBy(F.col("rows").desc())
)

# COMMAND ----------

# MAGIC %md
# MAGIC Three example rows of each failure status (only the failed rows are ranked), with their shard and row, to find
# MAGIC the image: `source` is the tar shard (or the input table) and `source_row` the sample's position in it.

# COMMAND ----------

failed = embeddings.where(F.col("status") != "ok")
first_three = Window.partitionBy("status").orderBy("uid")
display(
    failed.withColumn("n", F.row_number().over(first_three))
    .where(F.col("n") <= 3)
    .select("status", "image_status", "text_status", "error", "uid", "source", "source_row", "caption")
    .orderBy("status", "n")
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runs table
# MAGIC One row per run: rows in, already embedded, embedded now, rejected, throughput, rows by status, the config
# MAGIC and the model's identity (name, weights, checkpoint sha256, image size, dimension, preprocessing).

# COMMAND ----------

runs = io.read_table_ref(spark, io.sibling(cfg.output, "runs"))
display(runs.orderBy(F.col("started_at").desc()))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rejects table
# MAGIC Input rows that cannot have a row of their own, per model (replaced by each run): `null_uid`,
# MAGIC `duplicate_uid` (every row of a repeated uid but the first, by shard and row) and `unreadable_shard`.
# MAGIC Each input row is in the embedding table or here, never both.

# COMMAND ----------

rejects = io.read_table_ref(spark, io.sibling(cfg.output, "rejects")).where(F.col("model_id") == result.model_id)
display(
    rejects.groupBy("status")
    .agg(F.count("*").alias("rows"), F.first("error", ignorenulls=True).alias("example_error"))
    .orderBy(F.col("rows").desc())
)

# COMMAND ----------

display(rejects.orderBy("status", "source", "source_row").limit(100))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Score the embeddings
# MAGIC `clipsift score` (and `01_score`) reads the embedding table as a table input: `input.kind: table`, the table,
# MAGIC `input.model` = the `model_id` (the table may hold several models' rows) and `input.shard_col: source` (the tar
# MAGIC shard, for `negclip.grouping: shard`); `image_emb` / `text_emb` are the default column names, and float16
# MAGIC embeddings are read as they are. The cell prints the overrides for `01_score`'s widget over
# MAGIC `examples/score.yaml`, and checks them.
# MAGIC
# MAGIC img2dataset's shards hold about 10,000 samples (its `number_sample_per_shard`), fewer than
# MAGIC `negclip.batch_size` (32768): with `grouping: shard` each shard is one batch. For batches of B rows across
# MAGIC shards, use `negclip.grouping=pool` instead.

# COMMAND ----------

if cfg.output.table is not None:
    table_keys = [f"input.table={cfg.output.table}", "input.path=null"]
else:
    table_keys = [f"input.path={json.dumps(cfg.output.path)}", "input.table=null"]
score_overrides = [
    "input.kind=table",
    *table_keys,
    f"input.model={json.dumps(result.model_id)}",
    "input.shard_col=source",
]
score_cfg = load(ScoreConfig, "../examples/score.yaml", score_overrides)
print("01_score overrides: " + "; ".join(score_overrides))
print(json.dumps(to_dict(score_cfg.input), indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## GPU compute
# MAGIC - **One task per GPU**: keep `spark.task.resource.gpu.amount 1` (Databricks GPU compute's default;
# MAGIC   elsewhere also `spark.executor.resource.gpu.amount 1`, see `docker/README.md`). Each task's Python worker
# MAGIC   loads its own copy of the model, once: the model is cached per worker and Python workers are reused across
# MAGIC   tasks, so later tasks and commits skip the load. `0.5` lets two tasks share a GPU when the model fits twice.
# MAGIC - **One GPU per worker node**: the model goes to the first GPU the worker sees, not to the GPU Spark assigned
# MAGIC   the task, so on multi-GPU nodes the tasks would share GPU 0. Choose single-GPU instance types.
# MAGIC - **Batch size**: `embed.image_batch_size` is the images per model call (and per Arrow batch). ViT-L/14 in bf16
# MAGIC   (`precision: auto`) uses little memory per image: 256 runs on any recent GPU, 512-1024 keeps an 80 GB
# MAGIC   A100/H100 busier. Lower it if tasks fail with CUDA out of memory.
# MAGIC - **Decoding** runs on `embed.decode_threads` CPU threads per task, `embed.prefetch_batches` batches ahead of
# MAGIC   the model: raise the threads toward the node's cores per GPU when the GPU waits for images.
# MAGIC - **Commits**: each tar shard is one task, so `embed.shards_per_commit` should be at least the number of GPUs
# MAGIC   in the cluster (a multiple keeps them all busy to the end of each commit).
