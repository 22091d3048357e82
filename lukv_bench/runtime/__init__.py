"""One sample on one model: capture the prefill, compress it for every cell, decode every cell together.

:mod:`~lukv_bench.runtime.engine` (prefill, compress, generate, the sweep), :mod:`~lukv_bench.runtime.cache`
(the batched ragged cache), :mod:`~lukv_bench.runtime.capture` (attention statistics during the prefill),
:mod:`~lukv_bench.runtime.contract` (what scorers and allocators receive and return),
:mod:`~lukv_bench.runtime.selection` (scores and allocation -> kept tokens), :mod:`~lukv_bench.runtime.fidelity`,
:mod:`~lukv_bench.runtime.memory`, :mod:`~lukv_bench.runtime.models` and :mod:`~lukv_bench.runtime.prompts`.
"""
