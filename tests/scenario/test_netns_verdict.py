"""One agent's lost uplink opens no incident; one country's real outage does (real netns).

The race between the local-problem rule and the country verdict depends on
the phases of the agent's checks relative to each other and to the cut, so
every repetition restarts the agents (new random phases) and cuts at a random
moment. CI runs a few repetitions; bench/verdict_soak.py runs 20 of each.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.scenario.netns import Topology, netns_problem
from tests.scenario.verdict_mesh import COUNTRIES, DETECTION_BOUND, VerdictMesh

REPS = 2
UPLINK_LOST_SECONDS = 8.0

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerdictMesh]:
    problem = netns_problem()
    if problem:
        pytest.skip(f"netns verdict scenario skipped: {problem}")
    topo = Topology(len(COUNTRIES))
    seed = random.randrange(1 << 32)
    print(f"\nverdict scenario seed {seed}")
    vm = VerdictMesh(topo, tmp_path_factory.mktemp("verdict"), random.Random(seed))
    try:
        topo.create()
        vm.start()
        yield vm
    except BaseException:
        print(vm.logs())
        raise
    finally:
        vm.stop()
        topo.destroy()


def test_lost_uplink_opens_no_incident(mesh: VerdictMesh) -> None:
    for n in range(REPS):
        rep = mesh.lost_uplink(UPLINK_LOST_SECONDS)
        assert "local_problem" in rep.states, f"rep {n}: UG never flagged ({rep.states})"
        assert rep.new_incidents == [], (
            f"rep {n}: false incidents {[i['summary'] for i in rep.new_incidents]}\n{mesh.logs()}"
        )


def test_one_country_outage_of_one_check_opens_an_incident(mesh: VerdictMesh) -> None:
    for n in range(REPS):
        rep = mesh.regional("home")
        assert rep.found, (
            f"rep {n}: expected one incident for home in UG, got "
            f"{[(i['check'], i['peak_countries']) for i in rep.new_incidents]} "
            f"(latency {rep.latency}, UG states {rep.states})\n{mesh.logs()}"
        )
        assert "local_problem" not in rep.states, f"rep {n}: a country outage flagged UG"
        assert rep.latency is not None
        print(f"rep {n}: detected in {rep.latency:.1f}s (bound {DETECTION_BOUND:g}s)")
