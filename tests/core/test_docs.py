"""The documentation stays true: the generated capability page matches the code,
and the site builds without a warning."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from polyq.testing.conformance import BackendSuite

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_capabilities", DOCS / "gen_capabilities.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capabilities_page_is_current():
    try:
        gen = _load_generator()
        fresh = gen.generate()
    except Exception as exc:  # a plugin's client library missing here
        if "pip install" in str(exc):
            pytest.skip(f"cannot load every plugin to regenerate the page: {exc}")
        raise
    committed = (DOCS / "capabilities.md").read_text()
    assert committed == fresh, (
        "docs/capabilities.md is out of date: run `python docs/gen_capabilities.py` and commit it"
    )


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not linked from the nav in mkdocs.yml: {missing}"


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install 'polyq[dev]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the plugin example of docs/writing-a-plugin.md --------------------------------------

EXAMPLES = DOCS / "examples"


def test_plugin_example_is_the_one_shown():
    page = (DOCS / "writing-a-plugin.md").read_text()
    for name in ("polyq_jsonfile.py", "test_jsonfile.py"):
        assert (EXAMPLES / name).read_text() in page, f"docs/examples/{name} differs from the page"


def _example_backend_class():
    spec = importlib.util.spec_from_file_location("polyq_jsonfile", EXAMPLES / "polyq_jsonfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.JSONFileBackend


class TestPluginExampleConforms(BackendSuite):
    """The example backend of the docs passes the backend conformance suite."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend_url(cls, tmp_path_factory):
        return f"jsonfile://{tmp_path_factory.mktemp('store')}/results.json"

    def make_backend(self, url, **options):
        return _example_backend_class()(url, **options)
