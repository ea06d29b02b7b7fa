"""Admission (`max_concurrency` + `queue`) is one mechanism for every backend kind: here a process
backend (the ratequote fixture, one hung child) and a SOAP backend (the crm fixture's slow id),
each through a real single-process sidecar. Beyond the queue: RESOURCE_EXHAUSTED / 429 at once;
a call that cannot start before its deadline: refused at once, not after waiting for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from tests.harness import until
from tests.test_process_backend import QUOTE, Rpc, quote_http, rq_config, timed
from tests.test_soap_backend import call as soap_call
from tests.test_soap_backend import config as soap_config
from tests.test_soap_fixture import Crm, start_crm


def test_process_backend_queue_full_and_deadline_shedding(sidecars: Any) -> None:
    sc = sidecars(rq_config("--hang-on", "SLOWPOKE", pool={"size": 1}, timeout="2s",
                            max_concurrency=1, queue=1), single_process=True)
    rpc = Rpc(sc)
    try:
        assert rpc.call(QUOTE, product="WIDGET", quantity=1, region="EU")[0] == grpc.StatusCode.OK
        with ThreadPoolExecutor(max_workers=2) as pool:
            hung = pool.submit(quote_http, sc, "SLOWPOKE", 1)
            time.sleep(0.3)
            queued = pool.submit(quote_http, sc, "GADGET", 2)
            time.sleep(0.3)
            # one running, one waiting: the next is refused at once, over both fronts
            (status, body), took = timed(lambda: quote_http(sc, "WIDGET", 1))
            assert status == 429 and took < 1.0, (status, body, took)
            assert body["code"] == 8 and "overloaded" in body["message"], body
            (code, _, msg), took = timed(lambda: rpc.call(QUOTE, product="WIDGET", quantity=1, region="EU"))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 1.0, (code, msg, took)
            assert hung.result()[0] == 504  # the hung child was killed at its timeout
            assert queued.result()[0] in (200, 504)  # started after it, within its own deadline
        # the slot was held ~2 s by the hung call: the moving average now says a call waits
        # a while, so one with a short deadline behind a running call is refused at once
        with ThreadPoolExecutor(max_workers=1) as pool:
            hung = pool.submit(quote_http, sc, "SLOWPOKE", 1)
            time.sleep(0.3)
            (code, _, msg), took = timed(lambda: rpc.call(QUOTE, timeout=0.3, product="WIDGET",
                                                          quantity=1, region="EU"))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and took < 0.3, (code, msg, took)
            assert "deadline" in msg
            hung.result()
        assert rpc.call(QUOTE, product="WIDGET", quantity=1, region="EU")[0] == grpc.StatusCode.OK
    finally:
        rpc.close()
    until(lambda: sc.metric_value("adaptercar_backend_shed_total", reason="queue_full") >= 2,
               5, "queue_full sheds counted")
    until(lambda: sc.metric_value("adaptercar_backend_shed_total", reason="deadline") >= 1,
               5, "deadline sheds counted")


@pytest.fixture(scope="module")
def crm() -> Iterator[Crm]:
    fx = start_crm("--test-hooks", "--slow", "4")
    yield fx
    fx.stop()


def test_soap_backend_is_bounded_by_max_concurrency(crm: Crm, sidecars: Any) -> None:
    sc = sidecars(soap_config(crm.url, timeout="1500ms", max_concurrency=1, queue=0),
                  single_process=True)
    assert soap_call(sc, "GetCustomer", id=1).id == 1
    outcome: dict[str, Any] = {}

    def slow() -> None:
        try:
            soap_call(sc, "GetCustomer", id=7777)
        except grpc.RpcError as e:
            outcome["code"] = e.code()

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        soap_call(sc, "GetCustomer", id=2)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - t0 < 1.0
    th.join(10)
    assert outcome["code"] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert soap_call(sc, "GetCustomer", id=2).id == 2  # the slot is free again
