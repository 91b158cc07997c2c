"""decar: the pipeline's flows from a terminal, plus the demo and the Prefect UI.

Every flow subcommand takes the flow's parameters (the flow's required ones as arguments, the
rest as options with the flow's defaults), runs the flow in this process and prints its output
path at the end. Without PREFECT_API_URL the flows report to a temporary local server shared with
their Dask workers; `decar ui` serves the project's database (.prefect/) on a free port.
"""
from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from pathlib import Path

import typer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help=__doc__.split("\n\n")[0])


def _pairs(values: list[str] | None, option: str) -> dict[str, str] | None:
    """--sources a=b --sources c=d -> {"a": "b", "c": "d"}."""
    if not values:
        return None
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint=f"--{option}")
        out[key] = rest
    return out


def _is_dict(hint) -> bool:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    return any(typing.get_origin(a) is dict or a is dict for a in args)


def flow_command(name: str, module: str, attr: str, what: str, skip: tuple[str, ...] = ()) -> None:
    """Register `decar <name>` running flow `module.attr` with the flow's own parameters and help."""
    from prefect.utilities.callables import parameter_docstrings

    flow = getattr(__import__(module, fromlist=[attr]), attr)
    fn = flow.fn
    hints = typing.get_type_hints(fn)
    docs = parameter_docstrings(inspect.getdoc(fn))
    params, dicts = [], set()
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip:
            continue
        hint, help_text = hints[p.name], docs.get(p.name, "")
        if _is_dict(hint):
            dicts.add(p.name)
            hint, help_text = list[str] | None, help_text + " Repeat NAME=VALUE."
        if p.default is inspect.Parameter.empty:
            default = typer.Argument(..., help=help_text, show_default=False, metavar=p.name.upper())
        else:
            default = typer.Option(p.default, help=help_text, show_default=True if p.default is not None else "None")
        params.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint))

    def command(**kwargs):
        for key in dicts:
            kwargs[key] = _pairs(kwargs[key], key.replace("_", "-"))
        from flows.artifacts import show_terminal_progress

        show_terminal_progress()
        result = flow(**kwargs)
        typer.echo(f"{what}: {result}")

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = inspect.getdoc(fn).split("\n\nArgs:")[0]
    app.command(name, help=command.__doc__)(command)


flow_command("download", "flows.download", "download_audioset", "manifest")
flow_command("features", "flows.features", "cache_features", "feature store", skip=("config",))
flow_command("pretrain", "flows.pretrain", "pretrain_decar", "run directory")
flow_command("pretrain-delores-s", "flows.instance", "pretrain_delores_s", "run directory")
flow_command("pretrain-delores-m", "flows.instance", "pretrain_delores_m", "run directory")
flow_command("pretrain-slicer", "flows.instance", "pretrain_slicer", "run directory")
flow_command("recluster", "flows.recluster", "recluster", "labels")
flow_command("benchmark", "flows.benchmark", "benchmark_downstream", "results")


@app.command()
def demo(clips: int | None = typer.Option(None, help="clips in the generated pool [default: the demo's]"),
         seconds: float | None = typer.Option(None, help="length of each clip [default: the demo's]"),
         epochs: int | None = typer.Option(None, help="pre-training epochs [default: the demo's]"),
         clusters: int | None = typer.Option(None, help="k of k-means [default: the demo's]"),
         data_dir: str = typer.Option("data", help="where the pool, features and task data go"),
         runs_dir: str = typer.Option("runs", help="where the run goes"),
         prefect_home: str = typer.Option(".prefect", help="the Prefect database (then `decar ui`)"),
         skip_benchmark: bool = typer.Option(False, help="stop after pre-training")) -> None:
    """The whole pipeline on generated audio (what `make demo` runs), on a local Prefect server."""
    given = {"--clips": clips, "--seconds": seconds, "--epochs": epochs, "--clusters": clusters}
    argv = [a for flag, value in given.items() if value is not None for a in (flag, str(value))]
    argv += ["--data-dir", data_dir, "--runs-dir", runs_dir, "--prefect-home", prefect_home]
    # A fresh interpreter: the demo sets PREFECT_API_URL to its server before Prefect is imported, and
    # Prefect reads its settings once, at import (this process has imported it to read the flows).
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "demo", *argv, *(["--skip-benchmark"] if skip_benchmark else [])])


@app.command()
def ui(prefect_home: str = typer.Option(".prefect", help="the Prefect database to serve"),
       port: int = typer.Option(4200, help="preferred port; a free one is taken when it is busy")) -> None:
    """Serve the Prefect UI on the project's database and print the URL that works."""
    from demo.prefect_server import serve_ui

    serve_ui(Path(prefect_home), port)


@app.command("safety-net")
def safety_net(window: int = typer.Option(300, help="seconds without a heartbeat before a run is marked Crashed")):
    """Create (or replace) the automation that marks a flow run Crashed when its heartbeats stop.

    Flow runs send heartbeats only with PREFECT_FLOWS_HEARTBEAT_FREQUENCY set (>= 30 s) where they run."""
    from flows.automations import install_crashed_run_automation

    automation = install_crashed_run_automation(window)
    typer.echo(f"automation: {automation.name} ({automation.id}), window {window} s")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
