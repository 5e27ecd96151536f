"""Every ```bash command in README.md runs as written (dev.py lines are CI's and the demo test's job)."""

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_commands() -> list[str]:
    with open(README) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    lines = [line.split("  # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "python3 dev.py"))]


def test_readme_opens_with_the_two_commands():
    with open(README) as f:
        first_block = re.search(r"```bash\n(.*?)```", f.read(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as f:
        assert "python3 dev.py test" in f.read()


@pytest.mark.slow  # ~2 minutes alone, more under load: the step-by-step path, which the demo test also runs
def test_readme_commands_run_as_shown(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for command in readme_commands():
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert (tmp_path / "work" / "predict" / "submission.csv").exists()


def test_commands_that_need_a_tpu_gpu_or_bucket_parse():
    """```text commands need hardware or a bucket this machine lacks: they must at least parse as shown."""
    import shlex

    from tfrecords_builder.cli import build_parser
    from tfwhale import train

    with open(README) as f:
        blocks = re.findall(r"```text\n(.*?)```", f.read(), flags=re.S)
    checked = 0
    for line in (line.split("  # ")[0].strip() for block in blocks for line in block.splitlines()):
        words = shlex.split(line)
        if words[:3] == ["python", "-m", "tfwhale.train"]:
            args = train.parse_args(words[3:])
            assert args.records and args.out
            checked += 1
        elif words[:1] == ["build-tfrecords"]:
            assert build_parser().parse_args(words[1:]).size
            checked += 1
    assert checked >= 3
