"""report: the words and figures a user reads. Running the analysis and writing its files (write),
the Markdown and text report (document) with its executive summary, per-cell, statistics and
confirmation sections (executive_summary, cells, statistics, confirmation), number formats
(formats), analysis_summary.json (json_summary), the figures (figures) and predict.py's overlay
picture (overlay_figure). Every sentence the report prints is worded here.

May import: core, data, cell, analysis, predict. Needs pandas and matplotlib."""
