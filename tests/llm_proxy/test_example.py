"""examples/serve_in_code.py serves what it says, to the official SDK."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import openai

from .conftest import Start, in_thread

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve_in_code.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_in_code", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_stack_answers(
    start_server: Start, sdk: Callable[[str], openai.OpenAI]
) -> None:
    url = await start_server(load_example().build_pipeline())
    client = sdk(url)

    response = await in_thread(
        lambda: client.chat.completions.with_raw_response.create(
            model="friendly", messages=[{"role": "user", "content": "Hi"}]
        )
    )
    models = await in_thread(lambda: [m.id for m in client.models.list()])

    assert response.parse().choices[0].message.content == "Happy to help!"
    assert response.headers["x-upstream-model"] == "friendly-v2"
    assert models == ["friendly", "echo"]
