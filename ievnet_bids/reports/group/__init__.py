"""Group level helpers: gather the participant outputs (:mod:`.read`), evaluate them against
reference masks (:mod:`.evaluate`), test (:mod:`.statistics`) and plot (:mod:`.plots`).

Everything is read from the participant outputs (``*_desc-tfs_volumes.tsv`` and the QC records
``*_desc-tfs_qc.json``), never from the raw data. Plots aggregate (histograms, one scatter,
line collections), so 1 or 5,000 subjects give the same handful of figures.

Statistics (all two-sided, from :mod:`ievnet_bids.metrics`):

* left vs right volume: paired Wilcoxon signed-rank over subjects, one pair per subject (its
  first session and slab, so repeated sessions do not count twice);
* evaluation mode (reference masks): per dataset and side mean ± SD of Dice, HD, HD95 and MSD
  (Table 2 style; infinite distances are counted, not averaged); Kruskal–Wallis across datasets
  and pairwise Mann–Whitney U with Benjamini–Hochberg FDR on per-ear values; paired Wilcoxon
  left vs right Dice over subjects/sessions/slabs with both ears.
"""

from __future__ import annotations

from ievnet_bids.reports.group.evaluate import (
    evaluate_els_rows,
    evaluate_pair,
    evaluate_rows,
    index_references,
    mask_name,
)
from ievnet_bids.reports.group.plots import (
    MAX_LINES,
    METRIC_LABELS,
    plot_evaluation,
    plot_left_right,
    plot_longitudinal,
    plot_volumes,
)
from ievnet_bids.reports.group.read import (
    EVAL_METRICS,
    GROUP_COLUMNS,
    MAX_TABLE_ROWS,
    SIDES,
    clean,
    find_volume_tables,
    load_datasets,
    numeric,
    read_participant_rows,
)
from ievnet_bids.reports.group.statistics import (
    OUTLIER_Z,
    evaluation_summary,
    evaluation_tests,
    first_per_subject,
    hydrops_summary,
    outliers,
    paired_volumes,
    robust_z,
    session_key,
    wilcoxon_left_right,
)

__all__ = [
    "EVAL_METRICS",
    "GROUP_COLUMNS",
    "MAX_LINES",
    "MAX_TABLE_ROWS",
    "METRIC_LABELS",
    "OUTLIER_Z",
    "SIDES",
    "clean",
    "evaluate_els_rows",
    "evaluate_pair",
    "evaluate_rows",
    "evaluation_summary",
    "evaluation_tests",
    "find_volume_tables",
    "first_per_subject",
    "hydrops_summary",
    "index_references",
    "load_datasets",
    "mask_name",
    "numeric",
    "outliers",
    "paired_volumes",
    "plot_evaluation",
    "plot_left_right",
    "plot_longitudinal",
    "plot_volumes",
    "read_participant_rows",
    "robust_z",
    "session_key",
    "wilcoxon_left_right",
]
