"""``longdoc extract|jobs|documents``: the service from a shell.

Exit status: 0 when the job succeeded (or the command did what it was asked), 1 when the job
failed or the server refused a request (its error code and message on stderr), 2 on usage
errors (a missing flag, schema file, server or key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from longdoc._common import is_url, load_schema
from longdoc.client import Client
from longdoc.errors import APIError, ConfigurationError, JobFailed
from longdoc.progress import progress_view
from schemas.api import DryRunOut, JobStatus

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _stdout() -> Console:
    # A pipe has no width: do not wrap ids at rich's default of 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 250)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _print_json(value: Any, out: str | None = None) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key)


# ---------------------------------------------------------------- extract


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw  # a bare string


def parse_pages(values: Sequence[str], sources: Sequence[str]) -> str | dict[str, str] | None:
    """``--pages 1-5,9`` for every document, or ``--pages FILE=1-5`` for one of them."""
    if not values:
        return None
    per_source: dict[str, str] = {}
    for value in values:
        name, sep, ranges = value.rpartition("=")
        if not sep:
            if len(values) > 1:
                raise UsageError("--pages RANGES applies to every document: give it once, or "
                                 "name each document (--pages FILE=RANGES)")
            return value
        if name not in sources:
            raise UsageError(f"--pages {value}: {name!r} is not one of the documents given")
        per_source[name] = ranges
    return per_source


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = dict(parse_option(o) for o in args.option)
    named = {"instructions": args.instructions, "mode": args.mode, "webhook_url": args.webhook,
             "max_cost_usd": args.max_cost, "citations": True if args.citations else None}
    options.update({k: v for k, v in named.items() if v is not None})
    return options


def print_plan(plan: DryRunOut, as_json: bool) -> None:
    if as_json:
        _print_json(plan.model_dump(mode="json"))
        return
    table = Table(title=f"Plan: {plan.plan.calls} call(s), estimated ${plan.estimated_cost_usd:.6f} "
                  f"({plan.profile})", title_justify="left")
    table.add_column("call", justify="right")
    table.add_column("documents")
    table.add_column("pages")
    table.add_column("prompt tokens", justify="right")
    for i, chunk in enumerate(plan.plan.chunks, start=1):
        pages = "-".join(str(p) for p in chunk.pages)
        table.add_row(str(i), ", ".join(chunk.documents), pages, f"{chunk.prompt_tokens:,}")
    console = _stdout()
    console.print(table)
    console.print(f"budget per call: {plan.plan.budget_tokens:,} prompt tokens; "
                  f"estimated cost: ${plan.estimated_cost_usd:.6f}")


def cmd_extract(args: argparse.Namespace) -> int:
    missing = [s for s in args.sources if not is_url(s) and not Path(s).is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    schema = read_schema(args.schema)
    pages = parse_pages(args.pages, args.sources)
    options = job_options(args)
    console = _stderr()
    view = progress_view(console)
    try:
        with _client(args) as client:
            if args.dry_run:
                plan = client.plan(args.sources, schema, pages=pages, password=args.password,
                                   on_upload=view.upload, timeout=args.timeout, **options)
                view.close()
                print_plan(plan, args.json)
                return EXIT_OK
            if args.no_wait:
                job = client.extract(args.sources, schema, wait=False, pages=pages,
                                     password=args.password, on_upload=view.upload, **options)
                view.close()
                print(job.id)
                return EXIT_OK
            job_id: list[str] = []

            def on_event(event: Any) -> None:
                if not job_id:
                    job_id.append(event.job_id)
                view.event(event)

            try:
                result = client.extract(args.sources, schema, pages=pages, password=args.password,
                                        on_upload=view.upload, on_event=on_event,
                                        timeout=args.timeout, **options)
            except KeyboardInterrupt:
                view.close()
                if job_id:
                    console.print(f"stopped waiting; job {job_id[0]} goes on "
                                  f"(`longdoc jobs cancel {job_id[0]}` stops it)")
                return 130
    finally:
        view.close()
    _print_json(result.model_dump(mode="json") if args.full else result.data, args.out)
    if args.out:
        console.print(f"result written to {args.out}")
    return EXIT_OK


def read_schema(value: str) -> dict[str, Any]:
    try:
        return load_schema(value)
    except FileNotFoundError:
        raise UsageError(f"--schema: no such file: {value}") from None
    except (ValueError, OSError) as exc:
        raise UsageError(f"--schema: not a JSON Schema ({exc})") from None


# ---------------------------------------------------------------- jobs and documents


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _stdout().print(table)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs.list(status=args.status, limit=args.limit, before=args.before)
    if args.json:
        _print_json(page.model_dump(mode="json"))
        return EXIT_OK
    _table(["id", "status", "created", "chunks", "cost (USD)", "error"],
           [(j.id, j.status, j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
             f"{j.progress.chunks_done}/{j.progress.chunks_total}", f"{j.cost_usd:.6f}",
             j.error.code if j.error else None) for j in page.data])
    if page.next_before:
        print(f"more: --before {page.next_before}")
    return EXIT_OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.wait(args.job_id, timeout=args.timeout) if args.wait \
            else client.jobs.get(args.job_id)
    _print_json(job.model_dump(mode="json"))
    return EXIT_FAILED if job.status in (JobStatus.FAILED, JobStatus.CANCELED) else EXIT_OK


def cmd_jobs_result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.jobs.result(args.job_id)
    _print_json(result.model_dump(mode="json") if args.full else result.data, args.out)
    return EXIT_OK


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.cancel(args.job_id)
    _print_json(job.model_dump(mode="json"))
    return EXIT_OK


def cmd_documents_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.documents.list(limit=args.limit, before=args.before)
    if args.json:
        _print_json(page.model_dump(mode="json"))
        return EXIT_OK
    _table(["id", "file", "status", "pages", "tokens", "bytes", "created"],
           [(d.id, d.filename, d.status, d.pages, d.tokens, d.bytes,
             d.created_at.strftime("%Y-%m-%d %H:%M:%S")) for d in page.data])
    if page.next_before:
        print(f"more: --before {page.next_before}")
    return EXIT_OK


def cmd_documents_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        doc = client.documents.get(args.document_id)
    _print_json(doc.model_dump(mode="json"))
    return EXIT_OK


def cmd_documents_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.documents.delete(args.document_id)
    print(f"deleted {args.document_id}")
    return EXIT_OK


# ---------------------------------------------------------------- the parser


def _connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--url", default=os.environ.get("LONGDOC_URL"),
                       help="the longdoc API, e.g. http://127.0.0.1:8000 (default: $LONGDOC_URL)")
    group.add_argument("--api-key", default=os.environ.get("LONGDOC_API_KEY"),
                       help="your API key (default: $LONGDOC_API_KEY)")


def _listing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="how many, newest first (max 500)")
    parser.add_argument("--before", help="the next page: the id printed after 'more:'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_commands(sub: Any) -> None:
    """The user commands, added to ``longdoc``'s own subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    extract = sub.add_parser(
        "extract", help="turn documents into JSON that matches a schema",
        formatter_class=formatter, description=(
            "Uploads the files (or has the server fetch the URLs), runs ONE job over all of them,\n"
            "shows progress on stderr and prints the result's data as JSON on stdout.\n\n"
            "  longdoc extract contract.pdf --schema schema.json > contract.json\n\n"
            "Exit status: 0 succeeded, 1 the job failed or a request was refused, 2 usage."))
    extract.add_argument("sources", nargs="+", metavar="FILE_OR_URL",
                         help="PDFs or images; http(s):// URLs are fetched by the server")
    extract.add_argument("--schema", required=True,
                         help="JSON Schema of the answer: a .json file, or the JSON itself")
    extract.add_argument("--instructions", help="extra instructions for the model")
    extract.add_argument("--mode", choices=["json_schema", "tools"],
                         help="structured output (default) or a strict function call")
    extract.add_argument("--pages", action="append", default=[], metavar="[FILE=]RANGES",
                         help="only these pages, e.g. 1-5,9; FILE=RANGES for one document "
                         "(repeatable)")
    extract.add_argument("--citations", action="store_true",
                         help="ask for the page and a quote behind every value (result 'sources')")
    extract.add_argument("--webhook", metavar="URL", help="also POST job.succeeded/job.failed here")
    extract.add_argument("--max-cost", type=float, metavar="USD",
                         help="refuse the job if its estimate is higher")
    extract.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="any other job field, VALUE as JSON (e.g. max_tokens_per_call=4096)")
    extract.add_argument("--password", help="password of encrypted PDFs")
    extract.add_argument("--dry-run", action="store_true",
                         help="print the plan and its estimated cost; run nothing")
    extract.add_argument("--no-wait", action="store_true",
                         help="print the job id as soon as it is created and exit")
    extract.add_argument("--out", metavar="FILE", help="write the result here instead of stdout")
    extract.add_argument("--full", action="store_true",
                         help="print the whole result (data, warnings, sources, usage, cost)")
    extract.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    extract.add_argument("--timeout", type=float, metavar="SECONDS",
                         help="give up waiting after this long (the job goes on)")
    _connection(extract)
    extract.set_defaults(func=cmd_extract)

    jobs = sub.add_parser("jobs", help="list, show, fetch the result of, or cancel jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    listing = jobs_sub.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--status", choices=[s.value for s in JobStatus], help="only these")
    _listing(listing)
    show = jobs_sub.add_parser("show", help="a job's status, progress, usage and cost (JSON)")
    show.add_argument("--wait", action="store_true", help="wait until the job has ended")
    show.add_argument("--timeout", type=float, metavar="SECONDS", help="with --wait: at most")
    result = jobs_sub.add_parser("result", help="a succeeded job's data (JSON)")
    result.add_argument("--full", action="store_true", help="the whole result, not just data")
    result.add_argument("--out", metavar="FILE", help="write it here instead of stdout")
    cancel = jobs_sub.add_parser("cancel", help="stop a job: no further model calls")
    commands: list[tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]] = [
        (listing, cmd_jobs_list), (show, cmd_jobs_show), (result, cmd_jobs_result),
        (cancel, cmd_jobs_cancel)]
    for parser, func in commands:
        if parser is not listing:
            parser.add_argument("job_id", metavar="JOB_ID", help="the job's id (job_…)")
        _connection(parser)
        parser.set_defaults(func=func)

    documents = sub.add_parser("documents", help="list, show or delete uploaded documents")
    docs_sub = documents.add_subparsers(dest="documents_command", required=True, metavar="COMMAND")
    doc_list = docs_sub.add_parser("list", help="your documents, newest first")
    _listing(doc_list)
    doc_show = docs_sub.add_parser("show", help="a document's status, pages and tokens (JSON)")
    doc_delete = docs_sub.add_parser("delete", help="delete a document and its stored file")
    for parser, func in [(doc_list, cmd_documents_list), (doc_show, cmd_documents_show),
                         (doc_delete, cmd_documents_delete)]:
        if parser is not doc_list:
            parser.add_argument("document_id", metavar="DOCUMENT_ID",
                                help="the document's id (doc_…)")
        _connection(parser)
        parser.set_defaults(func=func)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="longdoc", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(root.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on a usage error
    console = _stderr()
    try:
        return int(args.func(args))
    except UsageError as exc:
        console.print(f"longdoc: {exc}", markup=False)
        return EXIT_USAGE
    except ConfigurationError as exc:
        console.print(f"longdoc: {exc}", markup=False)
        return EXIT_USAGE
    except JobFailed as exc:
        console.print(f"job {exc.job.id} {exc.job.status}: {exc.code}: {exc.message}", markup=False)
        return EXIT_FAILED
    except APIError as exc:
        console.print(f"error: {exc.code}: {exc.message} (HTTP {exc.status})", markup=False)
        return EXIT_FAILED
    except TimeoutError as exc:
        console.print(f"longdoc: {exc}", markup=False)
        return EXIT_FAILED
    except (OSError, httpx.HTTPError) as exc:  # a file that cannot be read, no server answering
        console.print(f"longdoc: {type(exc).__name__}: {exc}", markup=False)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
