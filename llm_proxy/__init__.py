"""The llm-proxy application: configuration, stack assembly, the HTTP app, serving, the CLI.

It composes the layers below it: the core (`pipeline`), the middlewares (`middlewares`)
and the upstream providers (`providers`). Nothing below imports it.
"""

from ._app import ProxyApp
from ._asgi import asgi_app
from ._chain import BUILTIN_MIDDLEWARES, middleware_chain, recommended_middlewares
from ._config import (
    MiddlewareConfig,
    ModelConfig,
    ProxyConfig,
    ServerConfig,
    key_warnings,
    load_config,
    parse_config,
)
from ._reload import LiveStack
from ._serve import serve
from ._stack import (
    DEFAULT_CONFIG,
    DeploymentsExporter,
    MetricsExporter,
    ModelsFor,
    Stack,
    build_stack,
    configure_process_logging,
    default_config,
)

__all__ = [
    "BUILTIN_MIDDLEWARES",
    "DEFAULT_CONFIG",
    "DeploymentsExporter",
    "LiveStack",
    "MetricsExporter",
    "MiddlewareConfig",
    "ModelConfig",
    "ModelsFor",
    "ProxyApp",
    "ProxyConfig",
    "ServerConfig",
    "Stack",
    "asgi_app",
    "build_stack",
    "configure_process_logging",
    "default_config",
    "key_warnings",
    "load_config",
    "middleware_chain",
    "parse_config",
    "recommended_middlewares",
    "serve",
]
