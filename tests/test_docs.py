"""Claims of README.md, ARCHITECTURE.md and docs/*.md that the code must back: every ``dlogit COMMAND
[SUBCOMMAND]`` they name exists, every ``dlogit.x.y`` resolves (a module, an attribute after
``import dlogit``, or a key of dlogit.yaml), and every keyword they pass to the estimators or to
``fit`` is a parameter of it."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

import dlogit

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG = yaml.safe_load((ROOT / "dlogit" / "dlogit.yaml").read_text())


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    node: object = CONFIG
    for p in parts:  # a config key (dlogit.monitor.interval, dlogit.engine.tree-radix; null values too)
        node = node[p] if isinstance(node, dict) and p in node else KeyError
    if node is not KeyError or parts[-1] == "yaml":
        return True
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_commands_exist(doc):
    import click

    from dlogit.cli import cli

    ctx = click.Context(cli)
    for cmd, sub in set(re.findall(r"`dlogit ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", _text(doc))):
        group = cli.get_command(ctx, cmd)
        assert group is not None, f"{doc.name} names `dlogit {cmd}`, which does not exist"
        if sub and isinstance(group, click.Group):
            assert group.get_command(ctx, sub) is not None, f"{doc.name}: `dlogit {cmd} {sub}` does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_dotted_names_resolve(doc):
    names = set(re.findall(r"`(dlogit(?:\.[A-Za-z_][\w-]*)+)", _text(doc)))
    bad = sorted(n for n in names if not _resolves(n))
    assert not bad, f"{doc.name} names what does not exist: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_keywords_passed_to_the_estimators_exist(doc):
    text = _text(doc)
    calls = {"LogisticRegressionCV": dlogit.LogisticRegressionCV, "LogisticRegression": dlogit.LogisticRegression}
    bad = []
    for name, cls in calls.items():
        params = set(inspect.signature(cls).parameters)
        for args in re.findall(rf"\b{name}\(([^()]*)\)", text):
            bad += [(name, kw) for kw in re.findall(r"(\w+)\s*=", args) if kw not in params]
    fit = set(inspect.signature(dlogit.LogisticRegression.fit).parameters)
    for args in re.findall(r"\.fit\(([^()]*)\)", text):
        bad += [("fit", kw) for kw in re.findall(r"(\w+)\s*=", args) if kw not in fit]
    assert not bad, f"{doc.name} passes keywords that do not exist: {bad}"
