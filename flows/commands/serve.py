"""`wikiembed serve`: an HTTP search service over a store's published generation.
"""

from __future__ import annotations

import argparse

from wikiembed.flows.commands.base import EXIT_OK, Command, add_model_options, always, given


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from wikiembed.serving.settings import ServeSettings

    add_model_options(parser, ServeSettings, skip=("cors_origin",))
    parser.add_argument("--cors-origin", action="append", default=argparse.SUPPRESS, metavar="ORIGIN",
                        help=ServeSettings.model_fields["cors_origin"].description + " Repeat for several.")


def _cmd_serve(args: argparse.Namespace) -> int:
    from wikiembed.serving.app import Service
    from wikiembed.serving.settings import ServeSettings

    service = Service(ServeSettings(**given(args, ServeSettings)))
    served = service.served
    print(f"wikiembed serve: generation {served.generation} of {served.root} ({served.model_id}, {served.chunks:,} chunks, "
          f"{served.chosen.name}) on {service.url}" + (f"; feedback to {service.feedback.path}" if service.feedback else ""), flush=True)
    service.run()
    return EXIT_OK


SERVE = Command(
    "serve",
    "an HTTP search service over the published generation, recording feedback for improve",
    _serve_arguments,
    _cmd_serve,
    quiet_downloads=True,
    reads_vectors=always,
)
