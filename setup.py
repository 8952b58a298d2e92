"""Package discovery for the one installed name, `wikiembed` (everything else is in pyproject.toml).

The library is `wikiembed/`, and the repository's top-level `flows/` and `tasks/` install as its
subpackages `wikiembed.flows` and `wikiembed.tasks` (pyproject.toml's `package-dir`). Every package
under those three folders is found here, so a new subpackage needs no edit: a hand-kept list once
left one out, and an installed `wikiembed` could not start.
"""

from setuptools import find_namespace_packages, setup


def packages() -> list[str]:
    found = find_namespace_packages(include=["wikiembed", "wikiembed.*"], exclude=["*.__pycache__"])
    for top in ("flows", "tasks"):
        found += [f"wikiembed.{name}" for name in find_namespace_packages(include=[top, f"{top}.*"], exclude=["*.__pycache__"])]
    return found


setup(packages=packages())
