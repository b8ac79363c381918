import re
import tomllib

import pytest
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
                      if line.strip().startswith("- ") and not line.strip().startswith("- -"))
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


# ----------------------------------------------------------------------------- the pinned dependency set

def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {name}=={pins[name]} is outside {req}"


def test_make_ci_and_conda_install_the_pins():
    make = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in make and make.count("$(PIN)") == 2
    assert "-c constraints.txt" in (ROOT / "environment.yml").read_text()


def test_installed_versions_are_the_pinned_ones():
    """Under `make test` (which installs with the pins) the venv holds exactly the tested versions."""
    import os
    from importlib.metadata import PackageNotFoundError, version
    if not os.environ.get("DYNEXIT_CONSTRAINTS"):
        pytest.skip("not run by `make test` with constraints (e.g. `make test CONSTRAINTS=` tries newer versions)")
    wrong = []
    for name, pinned in _pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-only dependency (e.g. CUDA libraries) that this machine does not need
        if installed != pinned:
            wrong.append(f"{name} {installed} (pinned {pinned})")
    assert not wrong, "installed versions differ from constraints.txt: " + ", ".join(wrong)
