"""`wikiembed export` and `wikiembed upload`: a store's published generation as a dataset folder, on the Hub or on a
Volume.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wikiembed.flows.commands.base import EXIT_OK, Command
from wikiembed.flows.commands.status import building_line


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("--to", required=True, help="destination folder (modal:VOLUME/PATH for a store on a Modal Volume)")
    parser.add_argument("--allow-partial", action="store_true", help="publish the done shards even if some are not")
    parser.add_argument("--replace", action="store_true", help="export into a folder wikiembed did not write, replacing its files")


def _upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision")
    parser.add_argument("--create-pr", action="store_true")
    parser.add_argument("--allow-partial", action="store_true", help="publish the done shards even if some are not")
    parser.add_argument("--replace", action="store_true", help="with dir:PATH, write into a folder wikiembed did not write")


def _cmd_publish(args: argparse.Namespace, target: str, **options: Any) -> int:
    from wikiembed.store_location import locate

    kwargs: dict[str, Any] = {"allow_partial": args.allow_partial, "replace": args.replace, **options}
    result = locate(args.store).publish(target, **kwargs)
    if result.building:
        print(f"wikiembed {args.command}: exported generation {result.generation}, the published one; "
              + building_line(args.store, result.building), file=sys.stderr)
    print(json.dumps(result.to_json(), indent=1, default=str))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    target = args.to if args.to.startswith(("dir:", "hub:", "modal:")) else f"dir:{args.to}"
    return _cmd_publish(args, target)


def _cmd_upload(args: argparse.Namespace) -> int:
    return _cmd_publish(args, args.to, private=args.private, revision=args.revision, create_pr=args.create_pr)


EXPORT = Command(
    "export",
    "write the HF-ready folder (data + dataset card)",
    _export_arguments,
    _cmd_export,
)


UPLOAD = Command(
    "upload",
    "publish to the Hugging Face Hub (hub:ORG/NAME) or a folder (dir:PATH; "
    "modal:VOLUME/PATH from a store on a Modal Volume)",
    _upload_arguments,
    _cmd_upload,
)
