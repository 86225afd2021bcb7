"""The readiness poller with a fake probe and a sleep the test drives: failed probes mark an
endpoint down, a passing one brings it back half-open, hosted endpoints are never polled; and
the health URL of every base-URL form."""

from __future__ import annotations

import asyncio

import pytest

from reranker_nvidia.core.upstream.routing.breaker import BreakerState, CircuitBreaker
from reranker_nvidia.core.upstream.routing.health import HealthPoller, health_url
from reranker_nvidia.core.upstream.routing.router import EndpointState
from reranker_nvidia.core.upstream.routing.table import EndpointSpec


def _endpoint(
    name: str, *, hosted: bool = False, health_path: str | None = "/ready"
) -> EndpointState:
    spec = EndpointSpec(
        index=0,
        url=f"http://{name}:8000",
        name=name,
        self_hosted=not hosted,
        health_path=None if hosted else health_path,
    )
    return EndpointState(spec, CircuitBreaker(clock=lambda: 0.0))


class Probe:
    """Answers from ``ready`` (True, False, or an exception to raise); records who was asked."""

    def __init__(self) -> None:
        self.ready: dict[str, bool | Exception | None] = {}  # None: never answers
        self.asked: list[str] = []
        self.hang = asyncio.Event()

    async def __call__(self, endpoint: EndpointState) -> bool:
        self.asked.append(endpoint.name)
        answer = self.ready.get(endpoint.name, True)
        if answer is None:
            await self.hang.wait()
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)


async def test_two_failed_probes_mark_down_and_a_passing_one_brings_it_back_half_open() -> None:
    nim = _endpoint("nim")
    probe = Probe()
    poller = HealthPoller([nim], probe)
    await poller.poll_once()
    assert (nim.ready, nim.state) == (True, BreakerState.CLOSED)
    probe.ready["nim"] = False
    await poller.poll_once()
    assert nim.state is BreakerState.CLOSED and nim.probe_failures == 1  # one is not enough
    await poller.poll_once()
    assert (nim.ready, nim.state, nim.breaker.held) == (False, BreakerState.OPEN, True)
    probe.ready["nim"] = True  # the restarted replica is ready: real calls probe it at once
    await poller.poll_once()
    assert (nim.ready, nim.state, nim.probe_failures) == (True, BreakerState.HALF_OPEN, 0)
    assert poller.rounds == 4


async def test_a_probe_that_raises_or_hangs_is_a_failed_one() -> None:
    raising, hanging = _endpoint("raising"), _endpoint("hanging")
    probe = Probe()
    probe.ready = {"raising": ConnectionError("refused"), "hanging": None}
    poller = HealthPoller([raising, hanging], probe, timeout_s=0.01, fails_to_down=1)
    await poller.poll_once()
    assert raising.state is BreakerState.OPEN and hanging.state is BreakerState.OPEN


async def test_hosted_endpoints_and_those_with_no_health_path_are_never_polled() -> None:
    nim, hosted, quiet = (
        _endpoint("nim"),
        _endpoint("hosted", hosted=True),
        _endpoint("quiet", health_path=None),
    )
    probe = Probe()
    poller = HealthPoller([nim, hosted, quiet], probe)
    assert poller.polled == (nim,)
    await poller.poll_once()
    assert probe.asked == ["nim"]

    nothing = HealthPoller([hosted], probe)
    nothing.start()  # nothing to poll: no task
    await nothing.aclose()


async def test_the_background_task_polls_every_interval_until_closed() -> None:
    nim = _endpoint("nim")
    probe = Probe()
    naps: list[float] = []
    third_round = asyncio.Event()

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            third_round.set()
        await asyncio.sleep(0)

    poller = HealthPoller([nim], probe, interval_s=7.5, sleep=sleep)
    poller.start()
    poller.start()  # once only
    await third_round.wait()
    await poller.aclose()
    assert naps[:3] == [7.5, 7.5, 7.5]
    assert poller.rounds >= 3 and len(probe.asked) == poller.rounds
    assert len(asyncio.all_tasks()) == 1
    await poller.aclose()  # again: nothing to do


async def test_a_listener_that_raises_does_not_stop_the_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def listener(*_: object) -> None:
        raise RuntimeError("a bug in the listener")

    nim = EndpointState(
        _endpoint("nim").spec, CircuitBreaker(clock=lambda: 0.0, on_change=listener)
    )
    probe = Probe()
    probe.ready["nim"] = False
    poller = HealthPoller([nim], probe, fails_to_down=1)
    await poller.poll_once()
    await poller.poll_once()
    assert poller.rounds == 2 and nim.breaker.held
    assert "a bug in the listener" in caplog.text


@pytest.mark.parametrize(("options"), [{"interval_s": 0}, {"timeout_s": -1}, {"fails_to_down": 0}])
def test_bad_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HealthPoller([], Probe(), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://nim:8000", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/v1", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/v1/", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/v1/ranking", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/v1/ranking/", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/reranking", "http://nim:8000/v1/health/ready"),
        ("http://nim:8000/v1/retrieval/nvidia/reranking", "http://nim:8000/v1/health/ready"),
        ("https://gw.example.com/nim-0", "https://gw.example.com/nim-0/v1/health/ready"),
        ("https://gw.example.com/nim-0/v1/ranking", "https://gw.example.com/nim-0/v1/health/ready"),
        ("  http://nim:8000/v1?tenant=a#frag  ", "http://nim:8000/v1/health/ready?tenant=a"),
        ("http://[fd00::7]:8000/v1", "http://[fd00::7]:8000/v1/health/ready"),
    ],
)
def test_the_health_url_of_every_base_url_form(base_url: str, expected: str) -> None:
    assert health_url(base_url) == expected


def test_the_health_url_with_a_path_of_its_own() -> None:
    assert health_url("http://nim:8000/v1/ranking", "/ready") == "http://nim:8000/ready"
