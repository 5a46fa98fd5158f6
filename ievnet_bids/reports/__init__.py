"""Quality control and reports: per-ear QC checks, figures, ``sub-XX.html`` and the group level."""
