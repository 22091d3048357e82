"""``type: lm_eval``: any lm-eval task, one unit per lm-eval task (:mod:`~lukv_bench.tasks.lm_eval.task_type`),
answered under every cell by lukv-bench's lm-eval model (:mod:`~lukv_bench.tasks.lm_eval.model`); loading tasks
offline (:mod:`~lukv_bench.tasks.lm_eval.loading`) and reading lm-eval's logged samples
(:mod:`~lukv_bench.tasks.lm_eval.logged`)."""
