"""The ``lukv-bench`` command line: run suites, list policies, profile attention per layer, render reports.

Exit codes: 0 success, 2 bad input (suite, policy, budget, model or data), 1 runtime failure.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from lukv_bench.errors import UserError


def _fail(err: BaseException) -> None:
    code = err.exit_code if isinstance(err, UserError) else 1
    kind = "error" if code == 2 else "runtime failure"
    click.echo(f"lukv-bench: {kind}: {err}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Maps UserError to exit 2 and any other exception to exit 1, with one clear line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; finished records are kept in results.jsonl", err=True)
            sys.exit(130)
        except Exception as err:  # noqa: BLE001 - the CLI boundary
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _fail(err)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.version_option(package_name="lukv-bench")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Compare KV-cache eviction policies: quality, memory and latency on your model and tasks."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def _check_out_folder(out: Path, given: bool) -> None:
    """Refuse an output folder that is a file, or that sits under a file, before any model loads."""
    what = f"--out {out}" if given else f"the default output folder {out} (set --out to choose another)"
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"cannot be created: {path} is a file"
            raise UserError(f"{what}: {where}, not a folder; pass --out with a folder path (created if missing)")


def _hide_progress_bars() -> None:
    """Silence the progress bars of the libraries a run drives (transformers, the hub, datasets, lm-eval's tqdm)."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # tqdm reads TQDM_* defaults when it is first imported (below, by transformers): lm-eval's bars pass no
    # `disable` and would show otherwise
    os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


@main.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: results/<suite name>). Rerunning resumes.")
@click.option("--policies", default=None,
              help="Comma-separated policy names (see `lukv-bench policies`); FullKV always runs as the reference. "
                   "Default without SUITE: snapkv,kvzip-plus.")
@click.option("--budgets", default=None,
              help="Comma-separated KV budgets as ratios of the prompt in (0, 1], or tokens:128,256. Default without "
                   "SUITE: 0.1,0.2.")
@click.option("--task", default=None,
              help="Comma-separated tasks: a built-in one (passkey; the offline families multikey, multivalue, "
                   "vartrack, factqa, fewshot, config; LongBench-like subsets such as hotpotqa_like), a .jsonl file "
                   "of {id, context, question, answers} rows, or an lm-eval task name. Default without SUITE: passkey.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Samples per task (overrides the suite).")
@click.option("--model", default=None,
              help="Model: embedded (the default without SUITE), a hub id, a folder or a .gguf file.")
@click.option("--device", default=None, help="auto (the default), cpu, cuda or cuda:N.")
@click.option("--dtype", default=None, help="float32 (the default), bfloat16 or float16.")
@click.option("--compress", default=None,
              help="prompt (the default: context and question compressed together) or context (the context is "
                   "compressed before the question is seen, kvpress's protocol).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars (lukv-bench's and the libraries').")
@click.option("--new-run", is_flag=True,
              help="If --out holds results of other settings, write to a fresh sibling folder (OUT-2, ...).")
@click.option("--add-settings", is_flag=True,
              help="If --out holds results of other settings, keep them and add the new settings beside them.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: one worker per model copy on a Ray cluster (pip install "
                   "\"lukv-bench[ray]\"), sized by the suite's resources.")
@click.option("--address", default=None,
              help="Ray cluster to join (e.g. auto, or HEAD_IP:6379); default: RAY_ADDRESS, else a running local "
                   "cluster, else a new one on this machine. Needs --executor ray.")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="With --executor ray: runs of a unit again after its worker died, at most this many times.")
def run(suite: Path | None, out: Path | None, policies: str | None, budgets: str | None, task: str | None,
        limit: int | None, model: str | None, device: str | None, dtype: str | None, compress: str | None,
        no_progress: bool, new_run: bool, add_settings: bool, executor: str, address: str | None,
        max_retries: int) -> None:
    """Run SUITE (a YAML file), or without it the suite the options make, and write results.jsonl, report.md and
    plots to --out.

    Options given with SUITE replace its keys (--limit also every task's own limit). Without SUITE, e.g.
    `lukv-bench run --policies snapkv,kvzip-plus --budgets 0.1,0.2 --task passkey --limit 4`.
    """
    if no_progress:
        _hide_progress_bars()
    from lukv_bench.config.options import Overrides
    from lukv_bench.config.suite import load_suite, suite_from_options
    from lukv_bench.report.render import render_report
    from lukv_bench.run.executors import make_executor
    from lukv_bench.run.runner import Runner

    overrides = Overrides(policies=policies, budgets=budgets, task=task, limit=limit, model=model, device=device,
                          dtype=dtype, compress=compress)
    s = load_suite(suite, overrides) if suite is not None else suite_from_options(overrides)
    _check_out_folder(out or Path("results") / s.name, given=out is not None)
    out = out or Path("results") / s.name
    if new_run and add_settings:
        raise UserError("--new-run and --add-settings exclude each other: pick one")
    on_change = "new" if new_run else "add" if add_settings else "error"
    chosen = make_executor(executor, address=address, max_retries=max_retries)
    runner = Runner(s, out, progress=not no_progress, on_change=on_change)
    out = runner.out_dir
    runner.run(chosen)
    report = render_report(out)
    click.echo(f"results: {out / 'results.jsonl'}\nreport:  {report}\n         {report.with_suffix('.html')} "
               f"(plots embedded), {out / 'summary.csv'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def policies(as_json: bool) -> None:
    """List every registered policy with its scorer, allocator, parameters and plugin."""
    from lukv_bench.registry import format_policies

    click.echo(format_policies(json=as_json))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List every registered component (policies, scorers, allocators, decode rules, task types, metrics)
    with the plugin, distribution and version that supplied it, and any plugin that failed to load."""
    from lukv_bench.registry import format_plugins

    click.echo(format_plugins(json=as_json))


@main.command()
@click.argument("out", type=click.Path(file_okay=False, exists=True, path_type=Path))
def report(out: Path) -> None:
    """Re-render OUT/report.md and plots from OUT/results.jsonl."""
    from lukv_bench.report.render import render_report

    if not (out / "results.jsonl").is_file():
        raise UserError(f"{out / 'results.jsonl'} not found; run a suite with --out {out} first")
    report_md = render_report(out)
    click.echo(f"{report_md}\n{report_md.with_suffix('.html')}")


@main.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder for compare.md, compare.csv and plots/ (created if missing).")
def compare(folders: tuple[Path, ...], out: Path) -> None:
    """Compare two or more runs (result FOLDERS; the first is the baseline) on the tasks and samples they all
    scored: one table per task and one Pareto plot (score retained vs KV memory). Prints compare.md's path."""
    from lukv_bench.report.compare import write_comparison

    _check_out_folder(out, given=True)
    click.echo(str(write_comparison(list(folders), out)))


@main.command()
@click.option("--model", default=None,
              help="Model: embedded, a hub id, a folder or a .gguf file (default: the suite's, else embedded).")
@click.option("--suite", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile the samples of this suite's tasks (jsonl, longbench, needle; lm_eval tasks are skipped).")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile a JSONL file of {id, context, question, answers} rows instead. Without --suite and "
                   "--data: the built-in pass-key set (4 needles in ~1000 tokens).")
@click.option("--tau", default="0.8,0.9,0.95", show_default=True,
              help="LMBA attention-mass shares, comma-separated in (0, 1].")
@click.option("--cos", "cos", default="0.99", show_default=True,
              help="LMBO cosine-similarity thresholds, comma-separated in (0, 1].")
@click.option("--budget", type=float, default=0.2, show_default=True,
              help="Mean budget (ratio of the prompt) at which the policies' per-layer allocations are compared.")
@click.option("--limit", type=click.IntRange(min=1), default=4, show_default=True, help="Samples per task.")
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="Observation window in tokens (default: the suite's, else 32).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads on CPU.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder for the tables (CSV, JSON) and plots (PNG).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def profile(model: str | None, suite: Path | None, data: Path | None, tau: str, cos: str, budget: float,
            limit: int, window: int | None, threads: int | None, out: Path, no_progress: bool) -> None:
    """Per-layer attention profile: LMBA, LMBO and a retrieval ablation per layer and KV head.

    Also compares the per-layer budgets every layer-adaptive policy allocates at --budget with
    uniform, and correlates the measures across layers. Writes CSV/JSON tables and PNG plots to --out.
    """
    from lukv_bench.profile.driver import run_profile
    from lukv_bench.profile.files import write_outputs
    from lukv_bench.profile.options import ProfileSettings, parse_fractions

    settings = ProfileSettings(
        taus=parse_fractions(tau, "--tau", "0.8,0.9,0.95"),
        cos_thresholds=parse_fractions(cos, "--cos", "0.99"),
        budget=budget,
        window=window,
    )
    result = run_profile(model=model, suite=suite, data=data, settings=settings, limit=limit, threads=threads,
                         progress=not no_progress)
    files = write_outputs(result, out)
    for line in result.skipped:
        click.echo(f"note: {line}", err=True)
    click.echo(f"profiled {len(result.samples)} samples of {result.model}; wrote {len(files)} files to {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
