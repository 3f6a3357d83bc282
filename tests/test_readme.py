"""The README's usage example runs as written, and its two set-up commands are where CI expects them."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_usage_example_runs():
    block = re.search(r"<!-- usage-example -->\s*```python\n(.*?)```", _readme(), re.S)
    assert block, "README.md lost its usage example"
    exec(compile(block.group(1), "README.md", "exec"), {})


def test_two_setup_commands():
    text = _readme()
    for marker in ("demo-command", "test-command"):
        block = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
        assert block and len(block.group(1).strip().splitlines()) == 1, marker
