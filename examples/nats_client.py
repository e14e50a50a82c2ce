"""Submit a workflow over NATS and follow it, as a tenant's backend does (no HTTP involved).

    .venv/bin/flowrelay nats-user --tenant acme --submit   # prints user= and password_file=
    FLOWRELAY_TENANT=acme FLOWRELAY_NATS_USER=client-acme \\
    FLOWRELAY_NATS_PASSWORD_FILE=.flowrelay/secrets/nats/client-acme.password \\
    .venv/bin/python examples/nats_client.py
"""

import asyncio
import os
from pathlib import Path

from flowrelay_bus.client import FlowrelayClient

WORKFLOW = {"nodes": [{"id": "a", "data": {"name": "assistant", "instructions": "Answer briefly."}}], "edges": []}


async def main() -> None:
    tenant = os.environ.get("FLOWRELAY_TENANT", "acme")
    async with await FlowrelayClient.connect(
        os.environ.get("FLOWRELAY_NATS_URL", "nats://127.0.0.1:4222"),
        tenant=tenant,
        user=os.environ.get("FLOWRELAY_NATS_USER", f"client-{tenant}"),
        password=Path(os.environ["FLOWRELAY_NATS_PASSWORD_FILE"]).read_text().strip(),
    ) as client:
        run_id = await client.submit(WORKFLOW, "ping")
        async for event in client.events(run_id):  # replayed from the start, ends after the terminal event
            print(event.seq, event.type.value)
        record = await client.result(run_id)
        print(record.status.value, record.output)


asyncio.run(main())
