"""The exporter-toolkit's own test cases, replayed with this project's fixtures.

tests/toolkit_cases.py holds what the toolkit's tests expect of its 41 fixture files and its
39 server scenarios. Here each is reproduced with our own fixture for the same case (the one
whose ``# toolkit:`` line names it) and our own certificates, on a real listener.
scripts/replay-toolkit runs the same table against the toolkit's own files when its
repository is on the machine.

The one case that cannot apply: Go's HTTP/2 server refuses to start with a cipher list that
lacks the HTTP/2 cipher; this exporter serves HTTP/1.1 only, so the file loads (with a
warning that names it) and the listener serves. docs/security.md says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import toolkit_cases
from tests.pki import Pki, make_pki
from tests.test_webconfig import FIXTURES as OUR_FIXTURES
from tests.test_webconfig import TESTDATA, header, render

PASSWORDS = {"alice": "alice-pw", "carol": "carol-pw", "dave": "dave-pw"}


def covering(toolkit_name: str) -> list[Path]:
    """Our fixtures whose ``# toolkit:`` line names `toolkit_name`."""
    found = []
    for fixture in OUR_FIXTURES:
        for line in header(fixture, "toolkit"):
            names = [part.split(" (")[0].strip() for part in line.split(",")]
            if toolkit_name in names:
                found.append(fixture)
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> toolkit_cases.Environment:
    pki: Pki = make_pki(tmp_path_factory.mktemp("pki"))

    def fixture(name: str) -> Path:
        return render(covering(name)[0], pki.folder)

    users = (TESTDATA / "users_plain_http.yml").read_text()
    alice_hash = next(line.split(": ", 1)[1] for line in users.splitlines() if "alice:" in line)
    return toolkit_cases.Environment(
        fixture=fixture,
        ca=pki.ca,
        client_certs={"self-signed": pki.self_signed, "sans": pki.sans},
        passwords=PASSWORDS,
        hashes={"alice": alice_hash},
    )


@pytest.mark.parametrize("name", list(toolkit_cases.FIXTURES))
def test_toolkit_fixture_outcome(name: str, env: toolkit_cases.Environment) -> None:
    ours = covering(name)
    assert ours, f"no fixture of ours reproduces {name}"
    for fixture in ours:
        path = render(fixture, env.ca.parent)
        expected = toolkit_cases.FIXTURES[name]
        if expected == toolkit_cases.HTTP2_ONLY:  # HTTP/2 does not apply here (documented)
            expected = toolkit_cases.HTTP2_HERE
        assert toolkit_cases.load_outcome(path) == expected, fixture.name


def test_the_replay_counts_what_the_toolkit_has() -> None:
    assert len(toolkit_cases.FIXTURES) == 41
    assert len(toolkit_cases.SCENARIOS) == 39
    assert len({s.name for s in toolkit_cases.SCENARIOS}) == 39


@pytest.mark.parametrize(
    "scenario", toolkit_cases.SCENARIOS, ids=[s.name for s in toolkit_cases.SCENARIOS]
)
def test_toolkit_scenario(scenario: toolkit_cases.Scenario, env: toolkit_cases.Environment) -> None:
    outcome = toolkit_cases.run_scenario(scenario, env)
    if scenario.name in toolkit_cases.HTTP2_SCENARIOS:
        assert outcome == "ok"  # served: HTTP/2 does not apply here (documented)
    else:
        assert outcome == scenario.expect
