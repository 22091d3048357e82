"""Loading lm-eval tasks offline, without the noise lm-eval and nltk print when no hub is reachable."""

from __future__ import annotations

import contextlib
import io
import logging
import random
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from lukv_bench.errors import UserError

log = logging.getLogger(__name__)


def _leaf_tasks(task_dict: dict) -> dict[str, Any]:
    """Flatten lm-eval's (possibly nested, group-keyed) task dict to {task name: Task}."""
    out: dict[str, Any] = {}
    for k, v in task_dict.items():
        if isinstance(v, dict):
            out.update(_leaf_tasks(v))
        elif v is not None:
            name = k if isinstance(k, str) else getattr(getattr(v, "config", None), "task", str(k))
            out[name] = v
    return out


@contextlib.contextmanager
def _quiet_nltk(task_names: Sequence[str]) -> Iterator[None]:
    """Import RULER's haystack module without its offline ``nltk.download("punkt_tab")`` noise.

    That import tries a download when punkt_tab is missing, prints an error and then a
    success-looking line. The synthetic haystacks used here do not need punkt; the essay ones need
    downloads anyway. Does nothing unless a RULER task (``niah_*``, ``ruler*``) is requested, or
    when nltk is absent or punkt_tab is installed.
    """
    if not any(n.startswith(("niah", "ruler")) for n in task_names):
        yield
        return
    try:
        import nltk
    except ImportError:
        yield
        return
    try:
        nltk.data.find("tokenizers/punkt_tab")
        installed = True
    except LookupError:
        installed = False
    if installed:
        yield
        return
    real = nltk.download

    def no_download(*args: Any, **kwargs: Any) -> bool:
        log.info("nltk punkt_tab is not installed; not downloading it (RULER's synthetic haystacks do not need it)")
        return False

    nltk.download = no_download
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ImportError):
            import lm_eval.tasks.ruler.prepare_niah  # noqa: F401
        yield
    finally:
        nltk.download = real


class _DropKnownNoise(logging.Filter):
    """Drops two lm-eval warnings that are expected here and repeat once per task and setting."""

    NOISE = (
        "Custom kwargs can be passed to `--metadata`",  # RULER: we do pass them (max_seq_lengths)
        "No aggregation function defined for metric",  # RULER's per-length metric; mean is right
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the known noise."""
        msg = record.getMessage()
        return not any(n in msg for n in self.NOISE)


@contextlib.contextmanager
def quiet_lm_eval_logs() -> Iterator[None]:
    """Attach :class:`_DropKnownNoise` to the lm-eval loggers that emit it, for the duration."""
    flt = _DropKnownNoise()
    loggers = [logging.getLogger(n) for n in ("lm_eval.api.task", "lm_eval.evaluator_utils")]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)


def _task_manager(cfg: Any, metadata: dict[str, Any]) -> Any:
    """A TaskManager; only the include_path is indexed when it holds every requested task (0 s vs ~7 s)."""
    from lm_eval.tasks import TaskManager

    if cfg.include_path:
        tm = TaskManager(include_path=cfg.include_path, include_defaults=False, metadata=metadata)
        if all(name in tm.all_tasks for name in cfg.tasks):
            return tm
    return TaskManager(include_path=cfg.include_path, metadata=metadata)


_HUB_HINT = (
    " (it needs a download from the Hugging Face hub, which is not reachable: RULER's essay haystacks "
    "niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery and qa_squad/qa_hotpot do; "
    "niah_single_1, niah_multikey_2/3, ruler_vt, ruler_cwe and ruler_fwe generate their data offline)"
)


@contextlib.contextmanager
def seeded(seed: int, name: str) -> Iterator[None]:
    """Python's and NumPy's global random generators seeded from (``seed``, ``name``), restored afterwards.

    Tasks that generate their documents draw from the global generators without seeding them (lm-eval's
    RULER: needles, haystack positions, variable names), so each process would make other documents under
    the same sample ids and a resumed run would pair records of different data. Seeding per task name keeps
    one task's documents independent of which other tasks load before it.
    """
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(f"{seed}:{name}")
    np.random.seed(zlib.crc32(f"{seed}:{name}".encode()))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def load_tasks(cfg: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """{task name: Task} for every name in ``cfg.tasks`` (groups expanded), each generated under :func:`seeded`
    with the suite's seed (``cfg.seed``); names the one that fails."""
    tm = _task_manager(cfg, metadata)
    tasks: dict[str, Any] = {}
    with _quiet_nltk(cfg.tasks):
        for name in cfg.tasks:
            try:
                with seeded(cfg.seed, name):
                    if hasattr(tm, "load"):  # lm-eval >= 0.4.10: flat dicts
                        tasks.update(tm.load([name])["tasks"])
                    else:  # pragma: no cover - older lm-eval
                        from lm_eval.tasks import get_task_dict

                        tasks.update(_leaf_tasks(get_task_dict([name], tm)))
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
                hint = _HUB_HINT if any(w in text for w in ("Hub", "huggingface", "Connection", "resolve")) else ""
                msg = f"lm_eval task {cfg.name!r}: lm-eval could not load {name!r}: {text[:400]}{hint}"
                raise UserError(msg) from e
    return tasks
