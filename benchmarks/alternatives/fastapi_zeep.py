"""What a Python user would write instead of the sidecar for JSON → SOAP: FastAPI + zeep's
AsyncClient (httpx underneath) on uvicorn, the same GET /v1/customers/{id} as the benchmark's
sidecar, answering the same JSON.

    python benchmarks/alternatives/fastapi_zeep.py --port N --endpoint http://127.0.0.1:M/crm

Written the way the zeep and FastAPI docs show it: one AsyncClient for the process, the
service proxy bound to the endpoint, the reply read attribute by attribute. It prints
`LISTENING 127.0.0.1:PORT` once bound, as the floors do.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import uvicorn
import zeep
from fastapi import FastAPI
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

WSDL = Path(__file__).resolve().parents[2] / "legacy_fixtures" / "crm" / "crm.wsdl"
BINDING = "{urn:example:crm}CustomerBindingSoap"


def make_app(endpoint: str) -> FastAPI:
    client = zeep.AsyncClient(str(WSDL), transport=AsyncTransport())
    # AsyncClient.create_service hands back a blocking ServiceProxy (zeep 4.3): build the
    # async proxy on the binding as AsyncClient.bind does
    service = AsyncServiceProxy(client, client.wsdl.bindings[BINDING], address=endpoint)
    app = FastAPI()

    @app.get("/v1/customers/{customer_id}")
    async def get_customer(customer_id: int) -> dict[str, Any]:
        reply = await service.GetCustomerById(customerId=customer_id)
        return {"id": reply.customerId, "name": reply.fullName, "email": reply.contact.email}

    return app


async def serve(port: int, endpoint: str) -> None:
    config = uvicorn.Config(make_app(endpoint), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            return
        await asyncio.sleep(0.05)
    print(f"LISTENING 127.0.0.1:{port}", flush=True)
    await task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--endpoint", required=True)
    a = p.parse_args()
    asyncio.run(serve(a.port, a.endpoint))


if __name__ == "__main__":
    main()
