"""The foundation end to end: gRPC and JSON in, the ledger's line protocol out."""

from __future__ import annotations

from typing import Any

from tests.harness import Ledger, demo_like_config


def test_grpc_and_json_reach_the_ledger(ledger: Ledger, sidecars: Any) -> None:
    sc = sidecars(demo_like_config(ledger.address))
    status, body, _ = sc.http("GET", "/v1/accounts/1001/balance")
    assert status == 200
    assert body == {"accountId": "1001", "balanceCents": "125000", "currency": "EUR"}
    client = sc.grpc_client()
    reply = client.call("ledger.v1.Ledger.GetBalance", account_id="1002")
    assert reply.balance_cents == 5000 and reply.currency == "EUR"
    client.close()
    assert sc.stop() == 0
