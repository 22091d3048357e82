"""Records -> verdicts: exact tests, intervals and Holm (:mod:`~lukv_bench.report.stats`), the summary model
(:mod:`~lukv_bench.report.summary`), cost vs context length (:mod:`~lukv_bench.report.cost`), plots
(:mod:`~lukv_bench.report.plots`) and ``report.md`` (:mod:`~lukv_bench.report.render`)."""
