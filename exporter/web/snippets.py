"""Ready-to-paste examples of calling DeepSeek through the metering proxy: for the demo's start-up
banner and the status page. The key is a demo key, or a placeholder for the user's own."""

from __future__ import annotations

import json
import shlex

# The model the examples use: a current one (deepseek-chat and deepseek-reasoner were retired
# on 2026-07-24 and now answer 400 Model Not Exist).
EXAMPLE_MODEL = "deepseek-v4-pro"
CURRENT_MODELS = ("deepseek-flash", "deepseek-v4-pro")
KEY_PLACEHOLDER = "$DEEPSEEK_API_KEY"


def curl(proxy_url: str, key: str | None = None, model: str = EXAMPLE_MODEL) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    auth = f"Authorization: Bearer {key or KEY_PLACEHOLDER}"
    return (
        f"curl {proxy_url}/chat/completions \\\n"
        f"  -H {_shell_quote(auth, expand=key is None)} \\\n"
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(body)}"
    )


def python(proxy_url: str, key: str | None = None, model: str = EXAMPLE_MODEL) -> str:
    key_expr = json.dumps(key) if key else 'os.environ["DEEPSEEK_API_KEY"]'
    return (
        ("" if key else "import os\n\n")
        + "from openai import OpenAI\n\n"
        + f'client = OpenAI(api_key={key_expr}, base_url="{proxy_url}")\n'
        + "reply = client.chat.completions.create(\n"
        + f'    model="{model}", messages=[{{"role": "user", "content": "Hello!"}}]\n'
        + ")\n"
        + "print(reply.choices[0].message.content)\n"
        + "print(reply.usage)"
    )


def _shell_quote(text: str, expand: bool) -> str:
    # "$DEEPSEEK_API_KEY" must stay expandable; a literal demo key is quoted as it is.
    return f'"{text}"' if expand else shlex.quote(text)
