"""Classify videos with an exported artifact, as the run's test scored them.

    python -m vidaccel_train.predict ARTIFACT INPUT [INPUT ...] [--topk 5] [--json] [--csv FILE]
    python -m vidaccel_train.predict ARTIFACT --data-root ROOT --split val   # a labelled split: top-1/top-5, confusion
    python -m vidaccel_train.predict ARTIFACT long.mp4 --timeline [--stride 1.0] [--out DIR]
    python -m vidaccel_train.predict ARTIFACT --live SOURCE [--stride 1.0] [--json]

ARTIFACT is an export folder (its int8 program) or a .pte in one; the manifest says how to decode and
normalise clips, names the classes and records the test views (clips x crops) the export was
verified on, which predict uses unless --views says otherwise: its probabilities for a video
are those of the export's verification. An artifact whose sha256 differs from the manifest's is
refused. An INPUT is a video, a folder (searched recursively for videos, any extension FFmpeg
reads, in any case; hidden files left out) or a list file (.txt/.csv/.lst: one video per line,
optionally followed by its label, a class name or index). Labelled inputs are scored.

--timeline slides one clip over the whole video every --stride seconds and writes, per video,
<stem>.timeline.csv and .json (top-k per window with its start and end) and a .png of the
classes over time into --out, with the overall label (windows' probabilities averaged).

--live classifies a source as it plays: a camera (/dev/video0), a network stream (rtsp://,
http://, udp://, tcp://, ...), - (standard input) or a recording (played at its own pace). A
window every --stride seconds (default: the clip's span), its frames chosen from their timestamps
as --timeline chooses them; one line per window with its lag (from the arrival of its last frame
to its prediction), or one JSON object with --json. Decoding runs in a process of its own; while
the model is busy, windows are skipped, not queued. A network source that drops is reopened for up
to --reconnect seconds. The end of the source, Ctrl-C or SIGTERM print a summary (exit code 0; 1
if the reader process failed); a source that cannot be opened is one error line, exit code 2.

Unreadable videos are named on one line each and the others go on; the exit code is then 1.
A missing or modified artifact, an unknown option or an input without videos: one error line,
exit code 2, before any decoding.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vidaccel_train.cli import ArgumentParser, run_command
from vidaccel_train.data.layouts import LAYOUTS
from vidaccel_train.errors import PredictError, VideoDecodeError
from vidaccel_train.files import atomic_path, check_writable, output_errors
from vidaccel_train.predict.inputs import collect_inputs, split_inputs
from vidaccel_train.predict.predictor import Prediction, Predictor, parse_views, score
from vidaccel_train.predict.timeline import timeline_names


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("python -m vidaccel_train.predict", __doc__)
    parser.add_argument("artifact", help="an export folder (<run>/export: its int8 program) or a .pte in one")
    parser.add_argument("inputs", nargs="*", help="videos, folders and list files")
    parser.add_argument("--data-root", help="score a labelled split of a dataset root (any layout data.layout reads)")
    parser.add_argument("--split", default="val", help="the split of --data-root (default: val)")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    parser.add_argument("--views", help="CLIPSxCROPS per video (default: the test views in the manifest)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object per video instead of a table")
    parser.add_argument("--csv", help="also write one row per video to this CSV file")
    parser.add_argument("--timeline", action="store_true", help="classify every window of each video over time")
    parser.add_argument("--stride", type=float, help="seconds between timeline windows (default: the clip's span)")
    parser.add_argument("--out", default="timelines", help="folder for the timeline files (default: ./timelines)")
    parser.add_argument("--live", metavar="SOURCE", help="classify a camera, stream, pipe (-) or recording as it plays")
    parser.add_argument(
        "--reconnect",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="--live: how long a dropped network source is reopened (default: 30; 0: a drop ends it)",
    )
    parser.add_argument(
        "--input-format", help="--live: FFmpeg's input format, if it cannot be probed (mjpeg, h264, v4l2, ...)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--live: an FFmpeg input option (rtsp_transport=udp, video_size=1280x720, framerate=30); repeatable",
    )
    parser.add_argument(
        "--threads", type=int, help="--live: threads of the program (default: the runtime's, one a core)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes decoding videos in parallel (default: up to 4)",
    )
    return parser


def _check(args, parser) -> None:
    if args.topk < 1:
        parser.error(f"--topk must be 1 or more, got {args.topk}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    if args.stride is not None and not args.stride > 0:
        parser.error(f"--stride must be a positive number of seconds, got {args.stride}")
    if args.live is not None:
        if args.inputs or args.data_root or args.timeline or args.csv:
            parser.error("--live takes one source: no videos, --data-root, --timeline or --csv with it")
        if not args.reconnect >= 0:
            parser.error(f"--reconnect must be 0 or more seconds, got {args.reconnect}")
        if args.threads is not None and args.threads < 1:
            parser.error(f"--threads must be 1 or more, got {args.threads}")
        bad = [o for o in args.option if "=" not in o or not o.split("=", 1)[0]]
        if bad:
            parser.error(f"--option takes KEY=VALUE, got {bad[0]!r}")
        return
    live_only = [
        name
        for name, given in (
            ("--threads", args.threads is not None),
            ("--reconnect", args.reconnect != 30.0),
            ("--option", bool(args.option)),
            ("--input-format", args.input_format is not None),
        )
        if given
    ]
    if live_only:
        parser.error(f"{', '.join(live_only)}: only with --live")
    if not args.inputs and not args.data_root:
        parser.error("name videos, folders or list files, or a --data-root")
    if args.timeline and args.data_root:
        parser.error("--timeline takes videos, not a --data-root")


def _progress(total: int, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)  # a bar for people at a terminal; nothing in logs and pipes
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or total <= 3 or not console.is_terminal,
    )


def _print_table(results: Sequence[Prediction], classes: Sequence[str], topk: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("video", overflow="fold")
    table.add_column("prediction")
    table.add_column("score", justify="right")
    if topk > 1:
        table.add_column(f"next {topk - 1}")
    labelled = any(r.label is not None for r in results)
    if labelled:
        table.add_column("label")
    for result in results:
        if result.error:
            table.add_row(result.video, f"error: {result.error}", "", *([""] * (topk > 1)), *([""] * labelled))
            continue
        top = result.top(topk, classes)
        row = [result.video, top[0][0], f"{top[0][1]:.4f}"]
        if topk > 1:
            row.append(", ".join(f"{label} {score:.3f}" for label, score in top[1:]))
        if labelled:
            row.append(
                ""
                if result.label is None
                else ("= " if classes[result.label] == top[0][0] else "≠ ") + classes[result.label]
            )
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


def _record(result: Prediction, classes: Sequence[str], topk: int) -> dict:
    record = {"video": result.video}
    if result.label is not None:
        record["label"] = classes[result.label]
    if result.error:
        record["error"] = result.error
    else:
        record["predictions"] = [{"label": label, "score": score} for label, score in result.top(topk, classes)]
    return record


def _write_csv(path: str, results: Sequence[Prediction], classes: Sequence[str], topk: int) -> None:
    """One row per video into ``path``, whole or not at all (a full disk: :class:`OutputError`)."""
    k = min(topk, len(classes))
    with output_errors(f"--csv {path}"), atomic_path(path) as staged, open(staged, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["video", "label", "error", *[f"{kind}{i + 1}" for i in range(k) for kind in ("prediction", "score")]]
        )
        for r in results:
            top = [] if r.error else [v for label, score in r.top(k, classes) for v in (label, f"{score:.6f}")]
            writer.writerow([r.video, "" if r.label is None else classes[r.label], r.error or "", *top])


def _print_scores(scores: dict, classes: Sequence[str], left_out: int) -> None:
    print(
        f"{scores['videos']} labelled videos{f' ({left_out} unreadable, left out)' if left_out else ''}: "
        f"top-1 {scores['top1']:.4f}, top-5 {scores['top5']:.4f}, mean class accuracy {scores['mean_class_accuracy']:.4f}"
    )
    if len(classes) <= 20:
        width = max(len(c) for c in classes)
        print(f"confusion (rows: true class, columns: predicted, in the order {', '.join(classes)}):")
        for name, row in zip(classes, scores["confusion"]):
            print(f"  {name:>{width}}  " + " ".join(f"{n:4d}" for n in row))


def main(argv: list[str] | None = None) -> int:
    """The command: ``argv`` (default: the process's arguments) -> exit code (0; 1 when a video
    could not be read; 2 for a user error, said in one ``error:`` line before any decoding)."""
    from vidaccel_train.quiet import silence_third_party_noise

    silence_third_party_noise()
    parser = _parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    return run_command(lambda: _run(args))


def _inputs(args, classes: Sequence[str]) -> list[tuple[str, int | None]]:
    """The videos to run on, and every output checked, before any decoding."""
    videos = collect_inputs(args.inputs, classes)
    if args.data_root:
        videos += split_inputs(args.data_root, args.split, args.layout, classes)
    if args.csv and not Path(args.csv).resolve().parent.is_dir():
        raise PredictError(f"--csv {args.csv}: its folder does not exist")
    if args.csv:
        check_writable(args.csv, "--csv", folder=False)
    if args.timeline:
        check_writable(args.out, "--out folder")
    return videos


def _run(args) -> int:
    views = parse_views(args.views) if args.views else None
    if args.live is not None and args.threads:
        from vidaccel_train.export.runtime import set_runtime_threads

        set_runtime_threads(args.threads)  # before the program is loaded: a pool changed under it can hang
    try:
        predictor = Predictor(args.artifact, views, args.workers)
        videos = [] if args.live is not None else _inputs(args, predictor.classes)
    except OSError as err:  # a file named that cannot be read (permissions, a folder for a file)
        raise PredictError(str(err)) from None
    classes = predictor.classes
    if args.live is not None:
        return _main_live(predictor, args)
    if args.timeline:
        return _main_timeline(predictor, videos, args)

    started = time.perf_counter()
    results: list[Prediction] = []
    with _progress(len(videos), quiet=False) as progress:
        task = progress.add_task(f"predicting ({predictor.views})", total=len(videos))
        for result in predictor.run(videos):
            results.append(result)
            progress.advance(task)
            if args.json:
                print(json.dumps(_record(result, classes, args.topk)), flush=True)
    if not args.json:
        _print_table(results, classes, args.topk)
    if args.csv:
        _write_csv(args.csv, results, classes, args.topk)  # a full disk: OutputError, one error line
    bad = [r for r in results if r.error]
    scores = score(results, classes)
    if args.json and scores:
        print(
            json.dumps(
                {"summary": {**scores, "classes": list(classes), "unreadable": sum(r.label is not None for r in bad)}}
            )
        )
    if not args.json:
        if scores:
            _print_scores(scores, classes, sum(r.label is not None for r in bad))
        readable = [r for r in results if not r.error]
        wall = time.perf_counter() - started
        decode = sum(r.decode_s for r in results) / max(1, len(results))
        model = sum(r.model_s for r in readable) / max(1, len(readable))
        workers = min(args.workers, len(videos)) if len(videos) > 1 else 0
        print(
            f"{len(results)} videos in {wall:.1f} s ({predictor.views} each): decode {decode * 1000:.0f} ms a video "
            f"{f'in {workers} worker processes' if workers else 'in this process'}, model {model * 1000:.1f} ms a video"
            + (f"; {len(bad)} unreadable" if bad else "")
            + (f"; rows in {args.csv}" if args.csv else "")
        )
    for result in bad:
        print(f"error: {result.video}: {result.error}", file=sys.stderr)
    return 1 if bad else 0


def _main_timeline(predictor: Predictor, videos: Sequence[tuple[str, int | None]], args) -> int:
    stride = args.stride or predictor.clip.span_s
    failed = 0
    for (video, _), name in zip(videos, timeline_names([video for video, _ in videos])):
        try:
            timeline = predictor.timeline(video, stride)
        except VideoDecodeError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        paths = timeline.write(Path(args.out), args.topk, name)  # a full disk: OutputError, one error line
        best = int(timeline.overall.argmax())
        if args.json:
            print(json.dumps(json.loads(paths[0].read_text())))
        else:
            print(
                f"{video}: {len(timeline.starts)} windows of {timeline.span_s:.2f} s every {stride:.2f} s; overall "
                f"{timeline.classes[best]} {float(timeline.overall[best]):.4f}; {', '.join(str(p) for p in paths)}"
            )
    return 1 if failed else 0


def _main_live(predictor: Predictor, args) -> int:
    import signal

    from vidaccel_train.data.live import live_source
    from vidaccel_train.predict.live import LiveSummary, live_windows, open_feed

    options = dict(option.split("=", 1) for option in args.option)
    try:
        source = live_source(args.live, args.input_format, options)
    except VideoDecodeError as err:
        raise PredictError(f"--live {err}") from None
    summary, failed = LiveSummary(), False
    classes, topk = predictor.classes, args.topk
    feed = open_feed(predictor, source, args.stride, args.reconnect)
    # Ctrl-C and `kill` end it with the summary, also where SIGINT came ignored (a job started with `&`).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            feed.__enter__()
        except VideoDecodeError as err:
            raise PredictError(f"--live {err}") from None
        if not args.json:
            print(
                f"live: {source.text}: {feed.description}; a window of {predictor.clip.span_s:.2f} s every "
                f"{feed.stride_s:.2f} s ({predictor.views.crops} crop{'s' if predictor.views.crops > 1 else ''}); "
                "Ctrl-C ends it",
                flush=True,
            )
        for window in live_windows(predictor, feed, summary):
            if args.json:
                print(json.dumps(window.record(classes, topk)), flush=True)
            else:
                top = window.record(classes, topk)["predictions"]
                others = ", ".join(f"{p['label']} {p['score']:.3f}" for p in top[1:])
                print(
                    f"{window.start_s:8.2f}–{window.end_s:.2f} s  {top[0]['label']} {top[0]['score']:.3f}"
                    f"{f'  ({others})' if others else ''}  lag {window.lag_s * 1000:.0f} ms",
                    flush=True,
                )
    except KeyboardInterrupt:
        feed.stop()
        summary.stats, summary.ended = feed.stats, "interrupted"
    except (RuntimeError, EOFError) as err:  # the reader process failed: what was scored still counts
        summary.stats, summary.ended, failed = feed.stats, f"the reader failed ({err})", True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        feed.close()
    if args.json:
        print(json.dumps({"summary": summary.record()}), flush=True)
    else:
        print(summary.line(), flush=True)
    if failed:
        print(f"error: --live {source.text}: {summary.ended}", file=sys.stderr)
    return 1 if failed else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
