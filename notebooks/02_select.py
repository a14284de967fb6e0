# Databricks notebook source
# MAGIC %md
# MAGIC # clipsift 2/3: selections as SQL views
# MAGIC
# MAGIC Runs the same `clipsift.jobs.select.run(spark, cfg)` as `clipsift select`: one view per selection over one scoring
# MAGIC run, and one row per selection in `<scores>_selections` (rule, parameters, cut-offs, size, the view's SQL).
# MAGIC Setup as in `01_score`.
# MAGIC
# MAGIC The `%sql` cells below use the names of `examples/select.yaml` (scores `clipsift.scores`, views
# MAGIC `clipsift.sel_<name>`, target `downstream`); edit them if your config differs.

# COMMAND ----------

import json

from clipsift.jobs import select
from clipsift.jobs.config import SelectConfig, load, to_dict

# COMMAND ----------

dbutils.widgets.text("config", "../examples/select.yaml", "Select config (YAML)")
dbutils.widgets.text("overrides", "", "Overrides (key=value; ...)")

# COMMAND ----------

config_path = dbutils.widgets.get("config")
overrides = [item.strip() for item in dbutils.widgets.get("overrides").split(";") if item.strip()]
cfg = load(SelectConfig, config_path, overrides)
print(json.dumps(to_dict(cfg), indent=2))

# COMMAND ----------

results = select.run(spark, cfg)
for r in results:
    print(f"{r.view}: {r.rows} of {r.pool_rows} rows ({r.rule}) cut-offs {json.dumps(r.cutoffs, default=str)}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The selections table
# MAGIC The latest run's selections, with their cut-offs and the SQL each view was created with.

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT name, rule, `rows`, pool_rows, round(`rows` / pool_rows, 4) AS fraction, cutoffs, params, view,
# MAGIC        run_id, created_at
# MAGIC FROM clipsift.scores_selections
# MAGIC WHERE run_id = (SELECT run_id FROM clipsift.scores_runs ORDER BY started_at DESC LIMIT 1)
# MAGIC ORDER BY created_at, name

# COMMAND ----------

# MAGIC %md
# MAGIC ## Overlaps
# MAGIC How much CLIPScore and negCLIPLoss agree at 30%, and how much of the paper's selection each keeps.

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT
# MAGIC   (SELECT count(*) FROM clipsift.sel_clipscore30) AS clipscore30,
# MAGIC   (SELECT count(*) FROM clipsift.sel_ncl30) AS ncl30,
# MAGIC   (SELECT count(*) FROM clipsift.sel_cs30_and_ncl30) AS both_30,
# MAGIC   (SELECT count(*) FROM clipsift.sel_ncl30_nsinf20) AS ncl30_nsinf20,
# MAGIC   (SELECT count(*) FROM clipsift.sel_ncl30_nsinf20 JOIN clipsift.sel_clipscore30 USING (uid))
# MAGIC     AS ncl30_nsinf20_in_clipscore30,
# MAGIC   (SELECT count(*) FROM clipsift.sel_ncl30_nsinf20 JOIN clipsift.sel_ranks20 USING (uid))
# MAGIC     AS ncl30_nsinf20_in_ranks20

# COMMAND ----------

# MAGIC %md
# MAGIC ## Inside the paper's selection
# MAGIC Score ranges of the rows `ncl30_nsinf20` keeps (a view is plain SQL over the score table: filter, join,
# MAGIC aggregate).

# COMMAND ----------

# MAGIC %sql
# MAGIC SELECT
# MAGIC   count(*) AS `rows`,
# MAGIC   min(negclip_loss) AS min_negclip_loss, percentile_approx(negclip_loss, 0.5) AS median_negclip_loss,
# MAGIC   min(normsim_inf_downstream) AS min_normsim_inf,
# MAGIC   percentile_approx(normsim_inf_downstream, 0.5) AS median_normsim_inf,
# MAGIC   percentile_approx(clip_score, 0.5) AS median_clip_score
# MAGIC FROM clipsift.sel_ncl30_nsinf20

# COMMAND ----------

# MAGIC %sql
# MAGIC -- Rows CLIPScore keeps and negCLIPLoss drops: highest CLIPScore first.
# MAGIC SELECT c.uid, c.source, c.clip_score, c.negclip_loss, c.negclip_r_i2t, c.negclip_r_t2i
# MAGIC FROM clipsift.sel_clipscore30 c LEFT ANTI JOIN clipsift.sel_ncl30 n USING (uid)
# MAGIC ORDER BY c.clip_score DESC
# MAGIC LIMIT 100
