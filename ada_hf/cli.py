"""The `ada-hf` console script (also `python -m ada_hf`).

Each subcommand is one entry of [`COMMANDS`]: a help line, a function that adds its arguments to its subparser, and a
function that runs it. To add a subcommand, write those two functions and add an entry; `main` does the rest.

    ada-hf demo [MODEL] [--host H] [--port N] [--share] [--random]     # the local web demo
    ada-hf demo --text [--variant L|H|both] [--budgets none,1.0,0.75] [--max-new-tokens N] [--save DIR] [--random]
    ada-hf budget-table PATH | --demo L|H
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from . import __version__


class Command(NamedTuple):
    """One subcommand: `add_arguments(parser)` declares its options; `run(args, parser)` returns the exit code.

    `run` receives its own subparser so that it can report bad input with `parser.error(...)` (usage, exit code 2).
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]


# ---------------------------------------------------------------------------------------------------------------------
# Argument types (raise argparse.ArgumentTypeError: argparse turns it into a usage error)
def budget_list(text: str) -> list[float | None]:
    """`"none,1.0,0.75"` -> `[None, 1.0, 0.75]`: comma-separated budgets in (0, 1]; `none` means no budget."""
    budgets: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise argparse.ArgumentTypeError(f"empty budget in {text!r}: give comma-separated numbers in (0, 1]")
        if item.lower() == "none":
            budgets.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a number: budgets are shares of the compute in (0, 1], or 'none'"
            ) from None
        if math.isnan(value) or not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"budget {item} is outside (0, 1]: a budget is the share of compute to run (1.0 runs the whole model)"
            )
        budgets.append(value)
    return budgets


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


# ---------------------------------------------------------------------------------------------------------------------
# ada-hf demo
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo import DEMO_MAX_NEW_TOKENS, TRAINED_MAX_NEW_TOKENS
    from .web_demo import add_arguments as add_web_demo_arguments

    add_web_demo_arguments(parser)
    text = parser.add_argument_group("--text: the terminal demo instead of the web app")
    text.add_argument(
        "--text",
        action="store_true",
        help="print answers, plans and timings under several budgets in the terminal (no web server)",
    )
    text.add_argument(
        "--variant",
        choices=("L", "H", "both"),
        default="both",
        help="scheduler variant: L drops whole layers, H drops groups of heads and MLP neurons (default: both)",
    )
    text.add_argument(
        "--budgets",
        type=budget_list,
        default=None,
        metavar="B1,B2,...",
        help="comma-separated budgets in (0, 1]; 'none' generates without a budget "
        "(default: none,1.0,0.85,0.75,0.6,0.5)",
    )
    text.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"tokens to generate per answer (default: {TRAINED_MAX_NEW_TOKENS} for the trained models' one-word "
        f"answers, {DEMO_MAX_NEW_TOKENS} with --random)",
    )
    text.add_argument(
        "--save",
        metavar="DIR",
        default=None,
        help="also save the demo model(s) and processor with save_pretrained (remote code); with both variants they "
        "go to DIR/L and DIR/H",
    )


def _demo_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .demo import DEMO_BUDGETS, DEMO_VARIANTS, run_demo

    if not args.text:
        from .web_demo import run_cli

        return run_cli(args, parser)
    if args.model is not None:
        parser.error(f"--text runs the embedded demo models; MODEL ({args.model!r}) is for the web app (drop --text).")

    variants = DEMO_VARIANTS if args.variant == "both" else (args.variant,)
    budgets = DEMO_BUDGETS if args.budgets is None else tuple(args.budgets)
    run_demo(
        variants=variants,
        budgets=budgets,
        max_new_tokens=args.max_new_tokens,
        save_dir=args.save,
        random_weights=args.random,
    )
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# ada-hf budget-table
def _budget_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        metavar="PATH",
        help="a saved AdaLLaVA model (a directory written by save_pretrained, or a Hub id already in the local cache); "
        "loaded with trust_remote_code=True",
    )
    parser.add_argument(
        "--demo", choices=("L", "H"), help="print the table of the 7B-shaped demo model (demo --random) of this variant"
    )


def format_budget_table(model) -> str:
    """`model.budget_table()` as a plain-text table, under a line naming the scheduler and its unit counts."""
    from .demo import format_table

    sched = model.scheduler
    rows = model.budget_table()
    last = "layers_run" if sched.scheduler_type == "L" else "head_slots_run"
    unit = "decoder layer" if sched.scheduler_type == "L" else f"slice of {sched.rank} heads + {sched.rank} MLP groups"
    header = (
        f"scheduler {sched.scheduler_type} (one unit = one {unit}): U_tot = {sched.num_total_units}, "
        f"U_pre = {sched.num_prefix_units} (always run), U_max = {sched.max_units}; budgets quantised in "
        f"{str(model.dtype).removeprefix('torch.')}"
    )
    table = format_table(
        ["units u", "min latency", "executed units", "latency_effective", last.replace("_", " ")],
        [
            [
                r["units"],
                "unreachable" if r["min_latency"] is None else f"{r['min_latency']:.4f}",
                r["executed_units"],
                f"{r['latency_effective']:.4f}",
                r[last],
            ]
            for r in rows
        ],
        right=[True] * 5,
    )
    footer = (
        "A budget b buys u = max(0, floor(U_tot * b) - U_pre) suffix units; 'min latency' is the lowest budget (on a "
        f"grid of step 1/{4 * sched.num_total_units}) that buys u."
    )
    return "\n".join([header, "", table, "", footer])


def _budget_table_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.path is None) == (args.demo is None):
        parser.error("give exactly one of PATH or --demo L|H")
    if args.demo is not None:
        from .demo import build_demo

        model, _ = build_demo(args.demo)
        source = f"the 7B-shaped demo model (ada-hf demo --random), variant {args.demo}"
    else:
        from transformers import AutoModelForImageTextToText

        path = args.path
        if os.path.isfile(path):
            parser.error(f"{path!r} is a file: give the directory that save_pretrained wrote")
        looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
        if looks_local and not os.path.isdir(os.path.expanduser(path)):
            parser.error(f"no such directory: {path!r}")
        try:
            model = AutoModelForImageTextToText.from_pretrained(os.path.expanduser(path), trust_remote_code=True)
        except (OSError, ValueError, KeyError, ImportError) as err:
            print(f"ada-hf budget-table: error: could not load {args.path!r}: {err}", file=sys.stderr)
            return 1
        source = args.path
    if getattr(model, "scheduler", None) is None:
        print(
            f"ada-hf budget-table: error: {source} has no latency scheduler (scheduler_type is None or it is not an "
            "AdaLLaVA model): every request runs the whole model.",
            file=sys.stderr,
        )
        return 1
    print(f"Budget table of {source}")
    print(format_budget_table(model))
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# ada-hf convert
def add_convert_arguments(parser: argparse.ArgumentParser, source_kind: str | None = None) -> None:
    """The options of `ada-hf convert` (also used by the thin scripts in convert/, which may preset --from)."""
    from .conversion import SOURCE_KINDS

    parser.add_argument("source", help="checkpoint folder or Hub repo id to convert")
    parser.add_argument("output", help="folder to write the Hub-ready repo into")
    parser.add_argument("--vision-tower", help="CLIP tower folder or repo id (original LLaVA/AdaLLaVA formats)")
    parser.add_argument(
        "--from", dest="source_kind", choices=SOURCE_KINDS, default=source_kind,
        help="source format (default: detected from config.json)",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default: the source's dtype")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: 5GB)")
    parser.add_argument(
        "--scheduler-type", choices=("keep", "none", "L", "H"), default="keep",
        help="keep the source's scheduler (default), none for a plain LLaVA, or L/H for a new one to train",
    )  # fmt: skip
    parser.add_argument("--num-prefix-layers", type=positive_int, help="prefix layers of a new scheduler")
    parser.add_argument("--scheduler-rank", type=positive_int, help="heads per unit of a new H scheduler")
    parser.add_argument("--repo-id", help="Hub repo id the model card should name")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--drop-unknown", action="store_true", help="drop (and list) tensors the model cannot use")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the converted folder with huggingface_hub")


def run_convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .conversion import KEEP, convert, push_to_hub

    scheduler_type = {"keep": KEEP, "none": None}.get(args.scheduler_type, args.scheduler_type)
    try:
        report = convert(
            args.source,
            args.output,
            vision_tower=args.vision_tower,
            source_kind=args.source_kind,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            scheduler_type=scheduler_type,
            num_prefix_layers=args.num_prefix_layers,
            scheduler_rank=args.scheduler_rank,
            overwrite=args.overwrite,
            drop_unknown=args.drop_unknown,
            repo_id=args.repo_id or args.push_to_hub,
        )
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        print(f"ada-hf convert: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.push_to_hub:
        print(f"Uploaded: {push_to_hub(report.output, args.push_to_hub)}")
    return 0


def convert_script_main(source_kind: str, description: str) -> int:
    """The body of the thin scripts in convert/: `ada-hf convert` with `--from` preset."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_convert_arguments(parser, source_kind=source_kind)
    return run_convert(parser.parse_args(), parser)


# ---------------------------------------------------------------------------------------------------------------------
# ada-hf show-merging (ada_hf/visualize.py)
def _show_merging_arguments(parser: argparse.ArgumentParser) -> None:
    from .visualize import add_show_merging_arguments

    add_show_merging_arguments(parser)


def _show_merging_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .visualize import run_show_merging

    return run_show_merging(args, parser)


def _calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="device to profile (default: cpu)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, but do not store the profile")


def _calibrate_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from .calibrate import calibrate
    from .hardware import local_profile_path

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        hardware = calibrate(args.device, save=not args.dry_run)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"cannot profile device {args.device!r}: {error}")
    print(f"matmul fp32 {hardware.peak[32] / 1e9:.1f} GFLOP/s, bf16 {hardware.peak[16] / 1e9:.1f} GFLOP/s at best")
    for bits, label in ((32, "fp32"), (16, "bf16")):
        grid = " ".join(f"{m}x{w}:{f / 1e9:.0f}" for m, w, f in hardware.matmul[bits])
        attention = " ".join(f"d{d}:{f / 1e9:.0f}" for d, f in hardware.attention[bits])
        print(f"  {label} GFLOP/s by rows x width: {grid}; attention by head_dim: {attention}")
    bandwidths = f"{hardware.bandwidth / 1e9:.1f} GB/s, key/value cache {hardware.cache_bandwidth / 1e9:.1f} GB/s"
    print(f"memory bandwidth {bandwidths}")
    layer_us, call_us = hardware.layer_overhead_s * 1e6, hardware.call_overhead_s * 1e6
    request_us = hardware.request_overhead_s * 1e6
    print(f"overhead {layer_us:.0f} us per decoder layer, {call_us:.0f} us per call, {request_us:.0f} us per request")
    print(f"measured / modelled time of a reference Llama: prefill x{hardware.prefill_factor:.2f}, "
          f"decode x{hardware.decode_factor:.2f}")
    print(f"({hardware.source})")
    if not args.dry_run:
        print(f"stored in {local_profile_path()}: use generate(..., hardware='local')")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
COMMANDS: dict[str, Command] = {
    "demo": Command(
        "the local web demo: ask about an image under a latency budget and see what ran (--text: in the terminal)",
        _demo_arguments,
        _demo_run,
    ),
    "convert": Command(
        "convert an original LLaVA-1.5, original AdaLLaVA or llava-hf checkpoint into a Hub-ready AdaLlava repo",
        add_convert_arguments,
        run_convert,
    ),
    "budget-table": Command(
        "print every budget a model can tell apart and what it executes (model.budget_table())",
        _budget_table_arguments,
        _budget_table_run,
    ),
    "calibrate": Command(
        "measure this machine once (matmul and attention speeds, bandwidth, overheads) for hardware='local'",
        _calibrate_arguments,
        _calibrate_run,
    ),
    "show-merging": Command(
        "draw which image patches survive iLLaVA token merging, in the vision encoder and in the LLM, as a PNG",
        _show_merging_arguments,
        _show_merging_run,
    ),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one subparser per entry of [`COMMANDS`]."""
    parser = argparse.ArgumentParser(
        prog="ada-hf",
        description="ada-hf: multimodal LLMs that adapt their compute to a per-request latency budget.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    children = {}
    for name, command in COMMANDS.items():
        child = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(child)
        children[name] = child
    return parser, children


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ada-hf`; returns the exit code (argparse exits with 2 on bad usage)."""
    parser, children = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args, children[args.command])
    except BrokenPipeError:  # `ada-hf ... | head`: stop quietly, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
