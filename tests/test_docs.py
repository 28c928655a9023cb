"""Every Python code block in the README and the guides runs, and every TOML block is a
valid configuration, so the docs cannot rot.

A TOML block that is only a piece of a configuration has `<!-- fragment -->` on the line
before it and is checked as TOML only; every other one must be a whole, valid configuration.
The guides' plugin configurations (a `[[providers]]` or `[[middlewares]]` entry naming the
guide's own code by import path) are served on a real server and asked one question.
"""

from __future__ import annotations

import re
import sys
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import msgspec
import pytest
import trio

from benchmarks.fake_upstream import FakeConfig, fake_text, run_fake_upstream
from llm_proxy import build_stack, parse_config, serve
from pipeline import ConfigError
from providers import PROVIDER_OPTIONS, parse_options

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TOML = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def run_guide(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run the blocks of one file in order as one module, like a reader would paste them."""
    module = ModuleType(name)
    # Registered like an imported module, so that msgspec and typing can resolve the
    # string annotations of the classes the blocks define, and a configuration can name
    # what they define by import path.
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(python_blocks(path), 1):
        code = compile(block, f"{path.name}[block {number}]", "exec")
        exec(code, module.__dict__)
    return module


@pytest.mark.parametrize("path", [d for d in DOCS if python_blocks(d)], ids=lambda p: p.name)
def test_code_blocks_run(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_guide(path, f"docs_{path.stem.replace('-', '_')}", monkeypatch)


def plugin_config(path: Path, module: str) -> str:
    """The guide's one TOML block that names `module` by import path."""
    blocks: list[str] = TOML.findall(path.read_text())
    (config,) = [block for block in blocks if f'"{module}:' in block]
    return config


async def ask(config_text: str, model: str) -> Any:
    """Serve the configuration on a free port and send it one chat request."""
    config = parse_config(config_text, "proxy.toml")
    stack = build_stack(config, "proxy.toml")
    stop = trio.Event()
    async with stack.running(), trio.open_nursery() as nursery:
        options = stack.serve_options(config.server)
        url = await nursery.start(
            partial(serve, stack.pipeline, port=0, shutdown_trigger=stop.wait, **options)
        )
        async with httpx2.AsyncClient() as client:
            response = await client.post(
                f"{url}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Hello"}]},
            )
        stop.set()
    assert response.status_code == 200, response.text
    return response.json()


def test_the_provider_guide_serves_its_provider_from_a_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = ROOT / "docs" / "custom-providers.md"
    guide = run_guide(path, "my_llm", monkeypatch)
    monkeypatch.setenv("LEGACY_COMPLETIONS_KEY", "sk-docs")

    async def main() -> None:
        async with run_fake_upstream(FakeConfig(api_key="sk-docs")) as upstream:
            text = plugin_config(path, "my_llm").replace("http://127.0.0.1:9000", upstream.url)
            answer = await ask(text, "legacy-chat")
            assert answer["choices"][0]["message"]["content"] == fake_text(200)
            assert [r.path for r in upstream.requests] == ["/v1/completions"]

    trio.run(main)
    assert guide.TextCompletionsProvider.__module__ == "my_llm"


def test_the_middleware_guide_serves_its_middlewares_from_a_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = ROOT / "docs" / "writing-middlewares.md"
    run_guide(path, "my_guards", monkeypatch)

    answer = trio.run(ask, plugin_config(path, "my_guards"), "m")

    # `no_digits` ran on the answer the mock provider gave.
    assert answer["choices"][0]["message"]["content"] == "Call ###-#### now"


FRAGMENT = "<!-- fragment -->"
"""Put on the line before a ```toml block that is a piece of a configuration, not a whole
one: it is checked as TOML only."""
TOML_BLOCK = re.compile(rf"^(?:({re.escape(FRAGMENT)})\n)?```toml\n(.*?)^```", re.S | re.M)


def toml_examples() -> list[Any]:
    """Every TOML block of the docs, named `file:line`, with whether it is a fragment."""
    examples = []
    for path in DOCS:
        text = path.read_text()
        for match in TOML_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(2))
            fragment = match.group(1) is not None
            name = f"{path.name}:{line}"
            examples.append(pytest.param(name, match.group(2), fragment, id=name))
    return examples


@pytest.mark.parametrize(("name", "text", "fragment"), toml_examples())
def test_every_toml_example_is_a_valid_configuration(name: str, text: str, fragment: bool) -> None:
    if fragment:
        msgspec.toml.decode(text)
        # The mark is for pieces only: it must not spare a whole example its checks.
        with pytest.raises(ConfigError):
            parse_config(text, name)
        return
    config = parse_config(text, name)
    # The options of the built-in kinds are checked when the stack is built; check them
    # here too, so that an example cannot name an option its kind does not have.
    for provider in config.providers:
        options = PROVIDER_OPTIONS.get(provider.kind)
        if options is not None:
            parse_options(provider, options)
