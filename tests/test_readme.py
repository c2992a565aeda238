"""The README's bring-your-own-policy example runs as written and improves on behaviour cloning."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_example_runs_and_improves_on_bc() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own policy", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    summary = namespace["result"].summary
    assert summary["online"]["eval/policy_return"] > summary["bc"]["eval/policy_return"], summary
