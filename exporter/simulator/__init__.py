"""A simulated DeepSeek API server that follows the project's API fact sheet (deepseek-api.md).

No machine here reaches the real API, so everything that talks to DeepSeek is tested against this
fake: the test suite (real HTTP on loopback, official SDKs as clients), the exporter's ``--demo``
mode (in-process) and ``deepseek-exporter simulate`` (standalone, see :func:`run_standalone`).

What it serves (each also under ``/v1`` where the real API accepts it):

- ``GET /user/balance``, ``GET /models``
- ``POST /chat/completions`` (OpenAI shape, streaming and not, thinking models stream
  ``reasoning_content`` before ``content``)
- ``POST /beta/completions`` (FIM)
- ``POST /anthropic/v1/messages`` (Anthropic shape and events; key in ``x-api-key``)
- ``POST /responses`` (OpenAI's Responses API: cached tokens inside ``input_tokens``, usage in
  ``response.completed`` when streamed)
- ``POST /search``, ``POST /fetch`` (web Search and Fetch, billed per request; the sheet gives
  no paths or shapes, so these are the bundled price table's assumption)

Server-side tools a request enables (Responses ``{"type": "web_search"}``, Anthropic
``web_search_*`` / ``web_fetch_*``) run once per request, are charged per call from the price
table's ``tool_call_prices`` and are reported in the reply (``web_search_call`` output items,
``usage.server_tool_use``) unless ``report_tool_calls`` is off.

Token counts are deterministic: prompt tokens are ``ceil(characters / 4)`` of the message texts (at
least 1); a repeated prompt prefix of the same account and model is a cache hit; the reply has
``completion_tokens`` tokens (capped by ``max_tokens``) plus ``reasoning_tokens`` for thinking
requests. Each successful completion is priced with :class:`~exporter.proxy.pricing.PriceTable` at
the simulator's clock and deducted from the account's first currency, granted balance first, never
below zero. A completion that reached inference is charged in full even if a fault later resets the
connection or withholds usage, like a real upstream that bills what it generated: tests of a
metering proxy can then compare what the proxy counted with :meth:`Simulator.stats`.

Test-only control: the Python methods of :class:`Simulator` and these unauthenticated HTTP
endpoints, which exist to drive the fake from tests, also out of process (``control=False`` turns
them off; never expose a simulator to a network you don't trust)::

    GET    /_simulator/state                   accounts (keys masked), pending faults, settings
    POST   /_simulator/accounts                {"name", "api_key", "balances": {"CNY":
                                                {"granted": "10", "topped_up": "100"}}}
    DELETE /_simulator/accounts/{name}
    POST   /_simulator/accounts/{name}/top_up  {"currency", "amount"}
    PUT    /_simulator/accounts/{name}/balance {"currency", "granted", "topped_up"}
    GET|POST|DELETE /_simulator/faults         list / add (the fields of Fault) / clear
    GET|DELETE /_simulator/requests            the request log / clear log, stats and cache
    GET    /_simulator/stats                   AccountStats per account
    PATCH  /_simulator/config                  settings, and {"time": unix seconds | null}

Not modelled: closing requests that wait over 10 minutes, rate limits other than
``max_concurrency``, client-side tool calls, ``n`` > 1, file parsing and speech.

The package, one concern per module: ``records`` (data types), ``errors`` (error replies),
``settings``, ``ledger`` (accounts, balances, the request log and stats, charging), ``faults``
(the fault queue and the replies that replace a whole reply), ``generation`` (the deterministic
replies as JSON objects and SSE events), ``writer`` (sending them, with the faults that alter
them), ``handlers`` (the API endpoints), ``control`` (``/_simulator/``), ``server`` (the
:class:`Simulator`), ``thread`` (:class:`SimulatorThread`), ``standalone`` (``simulate``) and
``workload`` (the synthetic clients of ``--demo``).
"""

from __future__ import annotations

from exporter.simulator.records import AccountStats, Fault, FaultKind, RequestRecord, SimAccount
from exporter.simulator.server import Simulator
from exporter.simulator.standalone import demo_accounts, main, run_standalone
from exporter.simulator.thread import SimulatorThread

__all__ = [
    "AccountStats",
    "Fault",
    "FaultKind",
    "RequestRecord",
    "SimAccount",
    "Simulator",
    "SimulatorThread",
    "demo_accounts",
    "main",
    "run_standalone",
]
