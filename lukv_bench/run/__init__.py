"""Many units: the one run loop (:mod:`~lukv_bench.run.runner`: plan, skip, write), the executors that evaluate
units here or on Ray (:mod:`~lukv_bench.run.executors`), the session that holds a model
(:mod:`~lukv_bench.run.session`), what the suite's names resolve to (:mod:`~lukv_bench.run.fingerprint`) and
durable results (:mod:`~lukv_bench.run.results`)."""
