import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_lists_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= _names(extra)
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1].splitlines()
    pip_pkgs = _names(line.strip()[2:] for line in pip_section
                      if line.strip().startswith("- ") and not line.strip().startswith("- -e"))
    assert wanted == pip_pkgs


def test_console_script_and_module():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["dynexit"] == "dynexit.cli:main"
    assert (ROOT / "dynexit" / "__main__.py").exists()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "\nmake test\n" in ci
    assert "dataset-fashion-mnist" in ci and "chromium" in ci


def test_early_exit_exported_lazily():
    import subprocess
    import sys
    code = ("import sys, dynexit; assert 'torch' not in sys.modules; "
            "from dynexit.inference import early_exit; assert dynexit.early_exit is early_exit")
    subprocess.run([sys.executable, "-c", code], check=True)
