"""pyproject.toml states lower bounds; requirements-lock.txt holds the tested set; they agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements-lock.txt: {line!r} is not an exact 'name==version' pin"
            pins[_canonical(name)] = version
    return pins


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"test", "gcs", "demo"} <= set(extras), f"pyproject.toml's extras are {sorted(extras)}"
    return [*project["dependencies"], *(r for group in extras.values() for r in group)]


def test_every_requirement_is_a_lower_bound_at_the_locked_version():
    lock = _lock()
    for requirement in _requirements():
        name, spec = REQUIREMENT.match(requirement).groups()
        assert "==" not in spec, f"pyproject.toml pins {requirement!r}: state a lower bound"
        bounds = dict(re.findall(r"(>=|<=|<|>|~=|!=)\s*([^,\s]+)", spec))
        assert ">=" in bounds, f"pyproject.toml: {requirement!r} has no lower bound"
        assert _canonical(name) in lock, f"{name} is required but not in requirements-lock.txt"
        assert lock[_canonical(name)] == bounds[">="] or (
            # A bound may name fewer release parts than the pin (POT>=0.9.7, 0.9.7.post1 locked).
            lock[_canonical(name)].startswith(bounds[">="] + ".")
        ), f"{name}: pyproject.toml says >={bounds['>=']}, the lock tests {lock[_canonical(name)]}"


def test_the_license_is_an_spdx_expression():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
