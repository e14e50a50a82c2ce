"""The original design, rebuilt for comparison: a FastAPI handler that opens a NEW
``ProcessPoolExecutor`` per request and runs any-agent in it.

This is deliberately the shape flowrelay replaced, kept faithful so the comparison is fair:
any-agent is imported at module level (so the forked child inherits it instead of importing
it again), the handler is a plain ``def`` (FastAPI runs it on its thread pool, so requests
overlap), and the child creates the agent and runs it with the synchronous ``agent.run()``
on its own fresh event loop. Serve it with
``uvicorn bench.original_app:app`` and ``ORIGINAL_MODEL_URL`` set to the scripted model.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from any_agent import AgentConfig, AnyAgent
from fastapi import FastAPI
from pydantic import BaseModel

#: The original design's per-request deadline.
RUN_TIMEOUT_S = 60

#: Where the child process finds the model (the scripted stand-in during the benchmark).
MODEL_URL_ENV = "ORIGINAL_MODEL_URL"


class ExecuteRequest(BaseModel):
    input: str


def run_agent_sync(prompt: str, api_base: str) -> str:
    """Runs in the per-request child: create the agent, run it, return its answer."""
    agent = AnyAgent.create(
        "tinyagent",
        AgentConfig(
            model_id="openai:gpt-4o-mini", api_base=api_base, api_key="scripted", callbacks=[]
        ),
    )
    trace = agent.run(prompt)
    return str(trace.final_output)


app = FastAPI(title="original design (benchmark baseline)")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/execute")
def execute(request: ExecuteRequest) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run_agent_sync, request.input, os.environ[MODEL_URL_ENV])
        output = future.result(timeout=RUN_TIMEOUT_S)
    return {"mode": "real_execution", "output": output, "suggestions": [], "trace": []}
