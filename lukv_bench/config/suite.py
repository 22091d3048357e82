"""Suite files: the YAML that says which model, policies, budgets and tasks to compare.

:func:`load_suite` validates the whole file before anything runs. Every problem becomes a line of
one :class:`~lukv_bench.errors.UserError` of the form ``FILE:LINE: KEY.PATH: problem (allowed: ...)``;
line numbers come from the YAML node marks (``yaml.compose``). Relative paths (task data files, a
model folder or ``.gguf`` file) resolve against the suite file's folder.

Data files are read here too (JSONL tasks: every row, with file and line), and every policy is resolved
(its name, its parameters, one entry per name), so bad input stops the run before any model loads.

Command-line options (:class:`~lukv_bench.config.options.Overrides`) go through the same checks: laid over
a file's keys (:func:`load_suite`) or over defaults (:func:`suite_from_options`); a problem with a key an
option set names the option instead of a line (``--budgets: budgets[0]: ...``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lukv_bench.config.options import OPTION_OF, Overrides, check_option_tasks, default_data
from lukv_bench.config.schema import INVALID, TaskContext, check_task, check_value, locate, resolve_path
from lukv_bench.config.schema import Checker as _Checker
from lukv_bench.config.schema import join_path as _join
from lukv_bench.config.schema import show as _show
from lukv_bench.errors import UserError
from lukv_bench.registry.catalog import catalog, resolve_policy
from lukv_bench.registry.params import problems_of
from lukv_bench.registry.policy import Policy
from lukv_bench.registry.task_contract import Key
from lukv_bench.runtime.contract import budget_problem, budget_warning
from lukv_bench.runtime.prompts import DEFAULT_TRUNCATE, TRUNCATE_MODES

__all__ = [
    "GenerationConfig",
    "Resources",
    "Suite",
    "SuiteError",
    "load_suite",
    "resolve_policies",
    "suite_from_options",
]


class SuiteError(UserError):
    """One or more problems in a suite (its file or the run's options); ``problems`` holds one formatted line per
    problem."""

    def __init__(self, problems: list[str], source: str = "suite file") -> None:
        self.problems = list(problems)
        head = f"invalid {source}" if len(problems) == 1 else f"{len(problems)} problems in {source}"
        super().__init__(f"{head}:\n  " + "\n  ".join(problems))


@dataclass
class GenerationConfig:
    """Decoding settings shared by every generative task."""

    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)


@dataclass
class Resources:
    """What each worker of the ``ray`` executor asks the cluster for (the local executor ignores it)."""

    workers: int | None = None  #: how many workers (None: as many as the cluster's CPUs/GPUs fit)
    cpus_per_worker: float | None = None  #: None: the suite's ``threads`` (1 when unset)
    gpus_per_worker: float = 0  #: fractions share a GPU between workers; 0 hides GPUs from workers


@dataclass
class Suite:
    """A validated suite. ``tasks`` are normalised dicts (defaults filled, paths absolute)."""

    name: str
    model: str  #: "embedded", a hub id, or an absolute local folder / .gguf path
    policies: list[str | dict[str, Any]]  #: as written; the registry resolves names and params
    budgets: list[float | dict[str, int]]  #: each a ratio in (0, 1] or {"tokens": N} (Budget.resolve)
    tasks: list[dict[str, Any]]
    path: Path | None = None  #: the suite file (absolute), None for suites built in code
    limit: int | None = None  #: samples per task (None: all)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    compress: str = "prompt"  #: "prompt" (context+question compressed) or "context" (context only)
    #: prompts longer than the model's positions minus max_new_tokens: "middle" (cut the middle of the
    #: context, LongBench's rule), "error" (stop) or "none" (use as is); see prompts.fit_prompt
    truncate: str = DEFAULT_TRUNCATE
    chat_template: bool | str = "auto"  #: "auto": on when the tokenizer has a template
    window: int = 32  #: observation window (queries at the end of the compressed block)
    decode_every: int = 1  #: run policies' decode-time eviction rule every k generated tokens
    storage: str = "kv"  #: "kv" or "query" (GQA storage mode)
    gqa_reduce: str = "mean"  #: "mean" | "max" | "sum"
    seed: int = 0
    device: str = "auto"  #: "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  #: "float32" | "bfloat16" | "float16"
    #: the compressed caches' storage dtype ("float16" | "bfloat16"; None: the model's dtype); scoring and
    #: attention's softmax stay fp32, ``kv_bytes`` counts the stored bytes
    kv_dtype: str | None = None
    threads: int | None = 1  #: torch threads on CPU (None: torch's default)
    #: settings decoded together per sample (None: all); bounds the memory one batch uses
    batch_settings: int | None = None
    #: what the report compares: {proposed: NAME, rivals: [NAMES]} (default: each policy vs FullKV only)
    report: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)  #: per-worker resources under ``--executor ray``
    lines: dict[str, int] = field(default_factory=dict, repr=False)  #: key path -> line in the file
    #: top-level keys set by command-line options -> the option (named in messages instead of a line)
    options: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def max_new_tokens(self) -> int:
        """Shortcut for ``generation.max_new_tokens``."""
        return self.generation.max_new_tokens

    @property
    def stop(self) -> list[str]:
        """Shortcut for ``generation.stop``."""
        return self.generation.stop

    @property
    def folder(self) -> Path:
        """Folder that relative paths resolve against (the suite file's, or the working directory)."""
        return self.path.parent if self.path is not None else Path.cwd()

    def where(self, key_path: str) -> str:
        """``FILE:LINE: KEY.PATH`` (``--option: KEY.PATH`` for a key an option set) for error messages raised
        after loading (e.g. a device that is not there)."""
        return locate(key_path, str(self.path) if self.path is not None else "<suite>", self.lines, self.options)

    def checker(self) -> _Checker:
        """A problem collector that cites this suite's file, lines and options."""
        return _Checker(str(self.path) if self.path is not None else None, self.lines, options=self.options)

    def budget_warning(self, budget_tokens: int, context_tokens: int) -> str | None:
        """Why a resolved budget makes every policy alike under this suite's window, else None
        (:func:`~lukv_bench.runtime.contract.budget_warning`: the rule ``compress()`` warns with too).

        Token budgets at or below the window are refused when the suite loads; ratios can only be
        checked once the prompt length is known.
        """
        return budget_warning(budget_tokens, context_tokens, self.window)

    def task(self, name: str) -> dict[str, Any]:
        """The normalised dict of the task called ``name``."""
        for t in self.tasks:
            if t["name"] == name:
                return t
        raise UserError(f"suite {self.name!r} has no task {name!r}; tasks: {[t['name'] for t in self.tasks]}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of the resolved suite (for results files)."""
        return {
            "name": self.name,
            "file": str(self.path) if self.path is not None else None,
            "model": self.model,
            "policies": copy.deepcopy(self.policies),
            "budgets": copy.deepcopy(self.budgets),
            "tasks": copy.deepcopy(self.tasks),
            "limit": self.limit,
            "generation": {
                "max_new_tokens": self.generation.max_new_tokens,
                "stop": list(self.generation.stop),
            },
            "compress": self.compress,
            "truncate": self.truncate,
            "chat_template": self.chat_template,
            "window": self.window,
            "decode_every": self.decode_every,
            "storage": self.storage,
            "gqa_reduce": self.gqa_reduce,
            "seed": self.seed,
            "device": self.device,
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "threads": self.threads,
            "batch_settings": self.batch_settings,
            "report": copy.deepcopy(self.report),
            "resources": {
                "workers": self.resources.workers,
                "cpus_per_worker": self.resources.cpus_per_worker,
                "gpus_per_worker": self.resources.gpus_per_worker,
            },
        }


# --- YAML with line numbers ---------------------------------------------------------------------


def _map_lines(node: yaml.Node, path: str, values: dict[str, int], keys: dict[str, int], dups: list) -> None:
    """Record the line of every value (``values``) and mapping key (``keys``) under ``node``."""
    values.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            name = str(k.value)
            child = _join(path, name)
            if name in seen:
                dups.append((child, k.start_mark.line + 1))
            seen.add(name)
            keys[child] = k.start_mark.line + 1
            values[child] = v.start_mark.line + 1
            _map_lines(v, child, values, keys, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            child = _join(path, i)
            values[child] = v.start_mark.line + 1
            _map_lines(v, child, values, keys, dups)


def _parse(text: str, file: str) -> tuple[Any, dict[str, int], dict[str, int], list]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        detail = e.problem or "parse error"
        if e.context:
            detail = f"{detail} ({e.context})"
        raise UserError(f"{where}: invalid YAML: {detail}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{file}: invalid YAML: {e}") from None
    values: dict[str, int] = {}
    keys: dict[str, int] = {}
    dups: list = []
    if root is not None:
        _map_lines(root, "", values, keys, dups)
    return data, values, keys, dups


# --- validation ----------------------------------------------------------------------------------

_TOP_KEYS = (
    "name",
    "model",
    "policies",
    "budgets",
    "tasks",
    "limit",
    "generation",
    "compress",
    "truncate",
    "chat_template",
    "window",
    "decode_every",
    "storage",
    "gqa_reduce",
    "seed",
    "device",
    "dtype",
    "kv_dtype",
    "threads",
    "batch_settings",
    "report",
    "resources",
)
#: top-level keys whose checks a :class:`Key` expresses (walked like a task type's keys); the others
#: (name, model, policies, budgets, tasks, generation, chat_template, device, report, resources) have their own
SUITE_KEYS: dict[str, Key] = {
    "limit": Key("int", minimum=1, nullable=True),
    "compress": Key("str", choices=("prompt", "context")),
    "truncate": Key("str", choices=TRUNCATE_MODES),
    "window": Key("int", minimum=1),
    "decode_every": Key("int", minimum=1),
    "storage": Key("str", choices=("kv", "query")),
    "gqa_reduce": Key("str", choices=("mean", "max", "sum")),
    "seed": Key("int"),
    "dtype": Key("str", choices=("float32", "bfloat16", "float16")),
    "kv_dtype": Key("str", choices=("float16", "bfloat16"), nullable=True),
    "threads": Key("int", minimum=1, nullable=True),
    "batch_settings": Key("int", minimum=1, nullable=True),
}
_TOKENS_HINT = "for token counts write budgets: {tokens: [...]}"
_TOKENS_OPTION_HINT = "for token counts write --budgets tokens:128,256"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

def _looks_like_path(value: str) -> bool:
    return value.startswith(("./", "../", "/", "~", ".\\")) or value.endswith(".gguf")


def _resolve_model(value: str, folder: Path) -> str | None:
    """Absolute path for local models (relative to ``folder``), the id itself otherwise, None if missing."""
    if value == "embedded":
        return value
    candidate = resolve_path(folder, value)
    if candidate.exists():
        return str(candidate)
    if _looks_like_path(value):
        return None
    return value


def _check_budgets(c: _Checker, value: Any) -> list[float | dict[str, int]]:
    allowed = "a non-empty list of ratios in (0, 1] (e.g. [0.1, 0.2]) or {tokens: [128, 256]}"
    hint = _TOKENS_OPTION_HINT if "budgets" in c.options else _TOKENS_HINT
    out: list[float | dict[str, int]] = []
    if isinstance(value, dict):
        c.unknown_keys("budgets", value, ("tokens",))
        tokens = value.get("tokens")
        if not isinstance(tokens, list) or not tokens:
            c.fail("budgets.tokens", f"expected a non-empty list of integers >= 1, got {_show(tokens)}")
            return out
        for i, t in enumerate(tokens):
            if c.is_int(f"budgets.tokens[{i}]", t, minimum=1):
                if {"tokens": t} in out:
                    c.fail(f"budgets.tokens[{i}]", f"duplicate budget {t}")
                out.append({"tokens": t})
        return out
    if not isinstance(value, list) or not value:
        c.fail("budgets", f"expected {allowed}, got {_show(value)}")
        return out
    for i, r in enumerate(value):
        path = f"budgets[{i}]"
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            c.fail(
                path,
                f"expected a ratio in (0, 1], got {_show(r)}; {hint}",
            )
        elif not 0 < r <= 1:
            c.fail(path, f"ratio must be in (0, 1], got {r}; {hint}")
        elif float(r) in out:
            c.fail(path, f"duplicate budget {r}")
        else:
            out.append(float(r))
    return out


def _check_policies(c: _Checker, value: Any) -> list[str | dict[str, Any]]:
    if not isinstance(value, list) or not value:
        c.fail(
            "policies",
            f"expected a non-empty list of policy names or {{name: ..., ...}} maps, got {_show(value)}",
        )
        return []
    out: list[str | dict[str, Any]] = []
    distinct: list[tuple[int, str | dict[str, Any]]] = []
    for i, p in enumerate(value):
        path = f"policies[{i}]"
        entry: str | dict[str, Any] | None = None
        if isinstance(p, str):
            if c.is_str(path, p):
                entry = p
        elif isinstance(p, dict):
            if "name" not in p:
                c.fail(
                    path,
                    "a policy map needs a 'name' key (e.g. {name: mixed, scorer: h2o, allocator: pyramid})",
                )
            elif c.is_str(_join(path, "name"), p["name"]):
                entry = dict(p)
        else:
            c.fail(path, f"expected a policy name or a map with 'name', got {_show(p)}")
        if entry is None:
            continue
        if entry in out:
            c.fail(path, "duplicate policy entry")
        else:
            distinct.append((i, entry))
        out.append(entry)
    _resolve(c, distinct)
    return out


def _resolve(c: _Checker, entries: list[tuple[int, str | dict[str, Any]]]) -> list[Policy]:
    """The policies of ``(index, entry)`` pairs resolved; every unknown name, bad parameter and second entry of one
    name goes to ``c`` (results are keyed by policy name: a second entry of a name would be skipped silently)."""
    out: list[Policy] = []
    first: dict[str, int] = {}
    for i, entry in entries:
        path = f"policies[{i}]"
        try:
            policy = resolve_policy(entry)
        except UserError as e:
            for problem in problems_of(e):
                c.fail(path, problem)
            continue
        if policy.name in first:
            c.fail(path, f"policy name {policy.name!r} is already used by policies[{first[policy.name]}] (results are "
                         f"keyed by name); give this variant its own name, e.g. "
                         f"{{name: my-{policy.name}, scorer: ..., allocator: ..., <params>}}")
            continue
        first[policy.name] = i
        out.append(policy)
    return out


def resolve_policies(suite: Suite) -> list[Policy]:
    """Every policy of ``suite`` resolved, in order; a :class:`SuiteError` lists every problem (a loaded suite has
    none left: :func:`load_suite` checks the same)."""
    c = suite.checker()
    policies = _resolve(c, list(enumerate(suite.policies)))
    if c.problems:
        raise SuiteError(c.problems, "suite file" if suite.path is not None else "suite")
    return policies


def _check_generation(c: _Checker, value: Any) -> GenerationConfig:
    gen = GenerationConfig()
    if value is None:
        return gen
    if not isinstance(value, dict):
        c.fail("generation", f"expected a map {{max_new_tokens: 32, stop: [...]}}, got {_show(value)}")
        return gen
    c.unknown_keys("generation", value, ("max_new_tokens", "stop"))
    if "max_new_tokens" in value and c.is_int("generation.max_new_tokens", value["max_new_tokens"], minimum=1):
        gen.max_new_tokens = value["max_new_tokens"]
    if "stop" in value:
        stop = value["stop"]
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            c.fail("generation.stop", f"expected a list of non-empty strings, got {_show(value['stop'])}")
        else:
            gen.stop = list(stop)
    return gen


def _check_resources(c: _Checker, value: Any) -> Resources:
    res = Resources()
    if value is None:
        return res
    if not isinstance(value, dict):
        c.fail("resources", f"expected a map like {{workers: 4, cpus_per_worker: 2, gpus_per_worker: 1}}, "
               f"got {_show(value)}")
        return res
    c.unknown_keys("resources", value, ("workers", "cpus_per_worker", "gpus_per_worker"))
    if "workers" in value and c.is_int("resources.workers", value["workers"], minimum=1, allow_none=True):
        res.workers = value["workers"]
    for key, rule in (("cpus_per_worker", "> 0"), ("gpus_per_worker", ">= 0")):
        v = value.get(key)
        if key not in value or (v is None and key == "cpus_per_worker"):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and rule == "> 0"):
            c.fail(f"resources.{key}", f"expected a number {rule} (fractions allowed, e.g. 0.5), got {_show(v)}")
        else:
            setattr(res, key, v)
    return res


def _check_task(c: _Checker, i: int, value: Any, folder: Path, seed: int, names: set[str],
                model: str | None = None) -> dict | None:
    """Check one task entry: name and type here, then the keys its (registered) type declares."""

    path = f"tasks[{i}]"
    if not isinstance(value, dict):
        c.fail(path, f"expected a map with at least 'name' and 'type', got {_show(value)}")
        return None
    ok = True
    for key in ("name", "type"):
        if key not in value:
            c.fail(path, f"missing required key {key!r}")
            ok = False
    types = catalog().task_types
    entry = types.get(value["type"]) if "type" in value else None
    if "type" in value and entry is None:
        c.is_choice(_join(path, "type"), value["type"], tuple(types.names()))
        return None
    if "name" in value and c.is_str(_join(path, "name"), value["name"]):
        name = value["name"]
        if not _TASK_NAME.match(name):
            c.fail(_join(path, "name"), f"{name!r}: use letters, digits, '_', '-', '.' (it names result rows)")
        elif name in names:
            c.fail(_join(path, "name"), f"duplicate task name {name!r}")
        names.add(name)
    if not ok:
        return None
    task = check_task(c, path, value, entry.obj(), TaskContext(folder, {"seed": seed, "model": model}))
    task["type"] = entry.name
    return task


def _check_budgets_above_window(c: _Checker, budgets: list[float | dict[str, int]], window: int) -> None:
    """Token budgets at or below the window make every policy keep just the last B tokens: refuse them."""
    for i, b in enumerate(budgets):
        if isinstance(b, dict) and (problem := budget_problem(b, window)) is not None:
            c.fail(f"budgets.tokens[{i}]", problem)


def _validate(data: Any, c: _Checker, folder: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        c.fail("", f"a suite file must be a YAML map with keys {', '.join(_TOP_KEYS)}; got {_show(data)}")
        return {}
    c.unknown_keys("", data, _TOP_KEYS)
    out: dict[str, Any] = {}
    for key in ("name", "policies", "budgets", "tasks"):
        if key not in data:
            c.fail("", f"missing required key {key!r}")

    if "name" in data and c.is_str("name", data["name"]):
        out["name"] = data["name"]
    model = data.get("model", "embedded")
    if c.is_str("model", model):
        resolved = _resolve_model(model, folder)
        if resolved is None:
            c.fail(
                "model",
                f"model path not found: {resolve_path(folder, model)} (use 'embedded', a hub id, "
                "a local model folder or a .gguf file)",
            )
        else:
            out["model"] = resolved
    if "policies" in data:
        out["policies"] = _check_policies(c, data["policies"])
    if "budgets" in data:
        out["budgets"] = _check_budgets(c, data["budgets"])
    for key, spec in SUITE_KEYS.items():
        if key in data and (value := check_value(c, key, data[key], spec, TaskContext(folder))) is not INVALID:
            out[key] = value
    out["generation"] = _check_generation(c, data.get("generation"))
    if "chat_template" in data and c.is_choice("chat_template", data["chat_template"], ("auto", True, False)):
        out["chat_template"] = data["chat_template"]
    window_ok = "window" not in data or "window" in out
    if out.get("budgets") and window_ok:
        _check_budgets_above_window(c, out["budgets"], out.get("window", Suite.window))
    seed = out.get("seed", 0)
    if "device" in data:
        dev = data["device"]
        if not isinstance(dev, str) or not _DEVICE.match(dev):
            c.fail("device", f"got {_show(dev)}; allowed: auto, cpu, cuda, cuda:N")
        else:
            out["device"] = dev
    if "report" in data:
        report = _check_report(c, data["report"], out.get("policies"))
        if report is not None:
            out["report"] = report
    if "resources" in data:
        out["resources"] = _check_resources(c, data["resources"])

    if "tasks" in data:
        tasks = data["tasks"]
        if not isinstance(tasks, list) or not tasks:
            c.fail("tasks", f"expected a non-empty list of task maps, got {_show(tasks)}")
        else:
            names: set[str] = set()
            checked = [_check_task(c, i, t, folder, seed, names, out.get("model")) for i, t in enumerate(tasks)]
            out["tasks"] = [t for t in checked if t is not None]
            _check_settings_tasks_ignore(c, data, out["tasks"])
    return out


def _check_settings_tasks_ignore(c: _Checker, data: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    """A suite-level setting that one of its task types does not apply (its ``ignored_settings``) is refused when
    the suite sets it to a value the type does not behave as: the records would claim a setting they did not use."""
    types = catalog().task_types
    for i, task in enumerate(tasks):
        ignored = getattr(types.lookup(task["type"]).obj, "ignored_settings", {})
        for key, (behaves_as, why) in ignored.items():
            if key in data and data[key] != behaves_as:
                c.fail(key, f"{data[key]!r} does not apply to tasks[{i}] ({task['type']} task {task['name']!r}), which "
                            f"{why}; remove {key!r}" + (f" or set it to {behaves_as!r}" if behaves_as else "") +
                            f", or run the {task['type']} tasks in a suite of their own")


def _problem_line(problem: str) -> int:
    """Line number in a formatted problem (0 when it has none), to list problems in file order."""
    m = re.match(r"^.*?:(\d+): ", problem)
    return int(m.group(1)) if m else 0


def load_suite(path: str | Path, overrides: Overrides | None = None) -> Suite:
    """Read and validate a suite file, with command-line ``overrides`` laid over its keys; raise
    :class:`UserError` listing every problem found."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"suite file not found: {file.resolve()}")
    file = file.resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read suite file: {e}") from None
    data, values, keys, dups = _parse(text, str(file))
    c = _Checker(str(file), values, keys)
    for key_path, line in dups:
        c.problems.append(f"{file}:{line}: {key_path}: duplicate key (YAML keeps only the last one)")
    if data is None:
        raise UserError(f"{file}: the suite file is empty; required keys: name, policies, budgets, tasks")
    return _build(data, c, file.parent, overrides or Overrides(), file, "suite file")


def suite_from_options(overrides: Overrides) -> Suite:
    """The suite of a run without a suite file: the options laid over :func:`~lukv_bench.config.options.default_data`;
    raise :class:`UserError` listing every problem, each naming its option."""
    return _build(default_data(overrides), _Checker(None), Path.cwd(), overrides, None, "run options")


def _build(data: Any, c: _Checker, folder: Path, overrides: Overrides, file: Path | None, source: str) -> Suite:
    """Validate ``data`` with the keys ``overrides`` set laid over it; the :class:`Suite`, or every problem raised."""
    given = overrides.data()
    if isinstance(data, dict) and given:
        if "policies" in given:
            data.pop("report", None)  # it names the file's policies; the default compares whatever runs
        data = {**data, **given}
        c.options = {key: OPTION_OF[key] for key in given}
    fields = _validate(data, c, folder)
    if "tasks" in given:
        check_option_tasks(c, given["tasks"])
    if c.problems:
        raise SuiteError(sorted(c.problems, key=_problem_line), source)
    if overrides.limit is not None and "tasks" in fields:
        fields["tasks"] = [{**t, "limit": overrides.limit} for t in fields["tasks"]]  # over each entry's own limit
    return Suite(path=file, lines=c.values, options=c.options, **fields)


def _check_report(c, value: Any, policies: list[Any] | None) -> dict[str, Any] | None:
    """``report: {proposed: NAME, rivals: [NAME, ...]}``: names must be policies of the suite."""
    if not isinstance(value, dict):
        c.fail("report", f"expected a map like {{proposed: kvzip-plus, rivals: [snapkv]}}, got {_show(value)}")
        return None
    names = {p if isinstance(p, str) else p.get("name") for p in policies or [] if isinstance(p, (str, dict))}
    ok = True
    for key in value:
        if key not in ("proposed", "rivals"):
            c.fail(f"report.{key}", "unknown key; allowed: proposed, rivals")
            ok = False
    picked = [("report.proposed", value["proposed"])] if "proposed" in value else []
    rivals = value.get("rivals")
    if rivals is not None and (not isinstance(rivals, list) or not rivals):
        c.fail("report.rivals", f"expected a non-empty list of policy names, got {_show(rivals)}")
        ok = False
    elif rivals:
        picked += [(f"report.rivals[{i}]", r) for i, r in enumerate(rivals)]
    for where, name in picked:
        if not isinstance(name, str) or not name:
            c.fail(where, f"expected a policy name, got {_show(name)}")
            ok = False
        elif policies and name not in names:
            c.fail(where, f"{name!r} is not among the suite's policies: {', '.join(sorted(map(str, names)))}")
            ok = False
    return dict(value) if ok else None
