# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Report: when does LMDB help, and how do WebDataset and LitData compare?
#
# Reads every run under `results_dir` (warm-ups dropped), writes the summary and speed-up tables
# (CSV + parquet) and the figures (PNG files under `out_dir`, not shown inline: open them from
# there). Statistics come from run-level figures: medians across
# repetitions, spread = fastest to slowest run. Every strategy is compared with ImageFolder
# (`ratios`), beside what it costs to write (`writers`) and how it shuffles: speed bought with a
# weaker shuffle is not the same product.

# %% tags=["parameters"]
results_dir: str = ""              # searched recursively for runs.parquet; empty: results/reference
out_dir: str = ""                  # tables/ and figures/ go here; empty: a temporary folder

# %%
from lmdbio.study import report

results_dir = report.results_location(results_dir)
runs, batches, skipped = report.load_results(results_dir)
written = report.write_report(runs, out_dir, results_dir=results_dir)
print(written)

# %% tags=["nbval-ignore-output"]
print(report.describe(runs, skipped))

# %% tags=["nbval-ignore-output"]
report.speedups(runs).round(3)

# %% [markdown]
# ## How much to trust each comparison
#
# A difference is called only when the two formats' images/s ranges (fastest to slowest run
# across the repetitions) do not overlap; otherwise the verdict is "no clear difference",
# whatever the medians say. Runs are flagged `disturbed` when other processes used more than
# 10 % of the CPU, or the hypervisor stole more than 5 %, while they ran.

# %% tags=["nbval-ignore-output"]
print(report.disturbed_runs(runs))
report.comparisons(runs).round(3)

# %% [markdown]
# ## The storage strategies side by side
#
# How each strategy shuffles (per epoch), then each one's images/s over ImageFolder's (median of
# the ABBA repetition pairs, with their range), then what each costs to write.

# %%
print(report.shuffle_notes())

# %% tags=["nbval-ignore-output"]
report.ratios(runs).round(3)

# %% tags=["nbval-ignore-output"]
report.writers(results_dir).round(3)
