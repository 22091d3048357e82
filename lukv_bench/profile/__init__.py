"""The per-layer attention profile of a model (``lukv-bench profile``): how many prompt tokens each layer
and KV head needs.

* :mod:`~lukv_bench.profile.options` — what is measured (:class:`ProfileSettings`) and the option parsing;
* :mod:`~lukv_bench.profile.measures` — LMBA, LMBO and the retrieval ablation per layer and KV head;
* :mod:`~lukv_bench.profile.answers` — the answer's reply tokens and its span in the context;
* :mod:`~lukv_bench.profile.allocations` — the policies whose per-layer allocations are compared;
* :mod:`~lukv_bench.profile.per_sample` — every measure of one sample, on one captured prefill;
* :mod:`~lukv_bench.profile.result` — the result: every sample's measures and what was skipped;
* :mod:`~lukv_bench.profile.stats` — means with 95% intervals, Spearman's correlation;
* :mod:`~lukv_bench.profile.tables` — the result's tables;
* :mod:`~lukv_bench.profile.files` — the CSV and JSON files, and the plots (:mod:`~lukv_bench.profile.plots`);
* :mod:`~lukv_bench.profile.driver` — :func:`run_profile`: model, samples, settings, the loop.
"""
