"""analysis: what the results of a study say, computed once, no file written here. The summary
table of every cell and its checks (summary, summary_checks), scores, the runs that count and the
one "best" rule (stats), the grid's exploratory tests (anova), the architecture comparison over
folds and seeds (comparison) with its decision, power and runs needed (decision), and all of it for
the report (study_analysis).

May import: core, data, cell. Needs numpy, pandas, scipy, statsmodels."""
