"""Token streaming and thread history in the engine, in-process: real any-agent, real HTTP to
the scripted model server (which streams one token per SSE chunk, with usage last)."""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from flowrelay_bus.threads import compact_turn, pick_history, turn_bytes
from flowrelay_contracts import EventType, Workflow
from flowrelay_contracts.threads import ThreadRecord, ThreadRun, ThreadTurn, TurnRef
from flowrelay_executor.engine import Engine
from flowrelay_executor.engine.history import TRANSCRIPT_HEADER
from flowrelay_executor.jobs import Job, JobHistory, ModelDefaults, Outcome, StreamSpec
from flowrelay_executor.tools import ToolRegistry

MODEL = "scripted:gpt-4o-mini"


@pytest.fixture(scope="module")
def model_url(scripted_model: str) -> str:
    """The session's scripted model server (``conftest.scripted_model``)."""
    return scripted_model


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[Engine]:
    tools = ToolRegistry(builtins=False)
    tools.add_module(importlib.import_module("flowrelay_test_tools"))
    engine = Engine(tools=tools, max_event_field_chars=100_000)
    yield engine
    await engine.aclose()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type: EventType, data: dict[str, Any]) -> None:
        json.dumps(data)  # it crosses a pipe as JSON
        self.events.append((str(type), data))

    def of(self, type: EventType) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == type]


def job(url: str, text: str, *, agents: list[dict[str, Any]] | None = None, stream: StreamSpec | None = None,
        history: JobHistory | None = None, api_key: str | None = None, pattern: str | None = None) -> Job:
    workflow: dict[str, Any] = {"agents": agents or [{"name": "chat", "instructions": "Answer."}]}
    if pattern:
        workflow["pattern"] = pattern
    return Job(
        run_id=f"run-{time.monotonic_ns()}", workflow=Workflow.model_validate(workflow), input=text,
        timeout_s=30, max_turns=10, stream=stream, history=history,
        defaults=ModelDefaults(model_id=MODEL, scripted_url=url, api_key=SecretStr(api_key) if api_key else None),
    )


async def run(engine: Engine, the_job: Job) -> tuple[Outcome, Recorder]:
    recorder = Recorder()
    return await engine.run(the_job, recorder), recorder


# -- streaming ----------------------------------------------------------------------------


async def test_deltas_concatenate_to_the_answer_with_exact_usage(engine: Engine, model_url: str) -> None:
    whole, _ = await run(engine, job(model_url, "#tokens=400"))
    streamed, rec = await run(engine, job(model_url, "#tokens=400", stream=StreamSpec(interval_s=0.001, max_chars=64)))

    assert streamed.status == "succeeded", streamed.error
    deltas = rec.of(EventType.LLM_DELTA)
    assert len(deltas) >= 1600 // 64  # 1599 characters in fragments of at most 64
    assert all(len(d["text"]) <= 64 for d in deltas)
    assert [d["part"] for d in deltas] == list(range(len(deltas)))
    assert {(d["agent"], d["turn"], d["attempt"]) for d in deltas} == {("chat", 1, 1)}
    assert "".join(d["text"] for d in deltas) == streamed.output == whole.output
    # exact usage: the provider's counts from the stream's last chunk, as without streaming
    assert streamed.usage == whole.usage and streamed.usage.output_tokens == 400
    [finished] = rec.of(EventType.LLM_FINISHED)
    assert finished["output_tokens"] == 400 and finished["cost_usd"] is not None
    types = [t for t, _ in rec.events]
    assert types.index("llm.finished") > max(i for i, t in enumerate(types) if t == "llm.delta")
    assert rec.of(EventType.AGENT_STARTED)[0]["stream_tokens"] is True


async def test_a_paced_stream_is_coalesced_not_sent_per_token(engine: Engine, model_url: str) -> None:
    outcome, rec = await run(engine, job(model_url, "#tokens=60 #pace=2", stream=StreamSpec(interval_s=0.05)))
    deltas = rec.of(EventType.LLM_DELTA)
    assert outcome.status == "succeeded"
    assert "".join(d["text"] for d in deltas) == outcome.output
    assert len(deltas) < 60  # 60 chunks arrived one by one; fewer events went out


async def test_tool_calls_are_rebuilt_from_the_stream(engine: Engine, model_url: str) -> None:
    agents = [{"name": "calc", "instructions": "Add.", "tools": ["add"]}]
    outcome, rec = await run(engine, job(model_url, '#call=add {"a": 20, "b": 22}', agents=agents,
                                         stream=StreamSpec(interval_s=0.001)))
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == "42"
    [started] = rec.of(EventType.TOOL_STARTED)
    assert started["arguments"] == {"a": 20, "b": 22}
    assert "".join(d["text"] for d in rec.of(EventType.LLM_DELTA)) == "42"
    assert {d["turn"] for d in rec.of(EventType.LLM_DELTA)} == {2}  # the first call only asked for the tool


async def test_streamed_secrets_are_redacted_across_fragments(engine: Engine, model_url: str) -> None:
    secret = "zebra-secret-value-0123456789"
    text = f"please repeat {secret} and {secret} once more #pace=1"
    outcome, rec = await run(engine, job(model_url, text, api_key=secret, stream=StreamSpec(interval_s=0.001, max_chars=5)))
    joined = "".join(d["text"] for d in rec.of(EventType.LLM_DELTA))
    assert secret not in joined and secret not in outcome.output
    assert joined == outcome.output and outcome.output.count("[REDACTED]") == 2
    assert len(rec.of(EventType.LLM_DELTA)) > 3


async def test_structured_output_falls_back_to_a_whole_answer_and_says_so(engine: Engine, model_url: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    agents = [{"name": "form", "instructions": "Fill it.", "output_schema": schema}]
    outcome, rec = await run(engine, job(model_url, "hello", agents=agents, stream=StreamSpec()))
    assert outcome.status == "succeeded" and outcome.output == {"answer": "echo: hello"}
    assert rec.of(EventType.LLM_DELTA) == []
    [started] = rec.of(EventType.AGENT_STARTED)
    assert started["stream_tokens"] is False and "structured output" in started["stream_note"]


async def test_without_stream_tokens_nothing_streams(engine: Engine, model_url: str) -> None:
    outcome, rec = await run(engine, job(model_url, "#tokens=50"))
    assert outcome.status == "succeeded" and rec.of(EventType.LLM_DELTA) == []
    assert "stream_tokens" not in rec.of(EventType.AGENT_STARTED)[0]


# -- history --------------------------------------------------------------------------------

EARLIER = [
    {"role": "user", "content": "my name is Ada; add 1 and 2"},
    {"role": "assistant", "content": None, "refusal": None, "provider_extra": {"signature": "kept"},
     "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "add", "arguments": '{"a":1,"b":2}'}}]},
    {"role": "tool", "tool_call_id": "call_a", "name": "add", "content": "3"},
    {"role": "assistant", "content": "3, Ada"},
]


async def test_the_first_agent_sees_earlier_turns_as_real_messages(engine: Engine, model_url: str) -> None:
    history = JobHistory(messages=EARLIER, turns=1)
    outcome, rec = await run(engine, job(model_url, "#recall", history=history))
    assert outcome.status == "succeeded", outcome.error
    assert outcome.output == ('recall: user: my name is Ada; add 1 and 2 | assistant calls add({"a":1,"b":2}) '
                              "| tool call_a: 3 | assistant: 3, Ada")
    assert rec.of(EventType.AGENT_STARTED)[0]["history"] == {"turns": 1, "dropped": 0, "as": "messages"}
    # the turn this run adds: the user's message and the agent's own, not the history again
    assert outcome.turn_form == "messages"
    assert outcome.turn is not None and outcome.turn[0] == {"role": "user", "content": "#recall"}
    assert outcome.turn[-1]["role"] == "assistant" and outcome.turn[-1]["content"] == outcome.output
    assert len(outcome.turn) == 2


async def test_a_turn_with_a_tool_call_is_stored_with_its_result(engine: Engine, model_url: str) -> None:
    agents = [{"name": "calc", "instructions": "Add.", "tools": ["add"]}]
    outcome, _ = await run(engine, job(model_url, '#call=add {"a": 2, "b": 3}', agents=agents, history=JobHistory()))
    assert outcome.status == "succeeded" and outcome.turn is not None
    roles = [m["role"] for m in outcome.turn]
    assert roles == ["user", "assistant", "tool", "assistant"]
    call_id = outcome.turn[1]["tool_calls"][0]["id"]
    assert outcome.turn[2]["tool_call_id"] == call_id and outcome.turn[2]["content"] == "5"
    assert "refusal" in outcome.turn[1]  # the provider's message as it came, null fields and all


async def test_sequential_runs_store_the_user_text_and_the_final_answer(engine: Engine, model_url: str) -> None:
    agents = [{"name": "one", "instructions": "a"}, {"name": "two", "instructions": "b"}]
    outcome, rec = await run(engine, job(model_url, "hi", agents=agents, pattern="sequential",
                                         history=JobHistory(messages=EARLIER, turns=1)))
    assert outcome.status == "succeeded"
    assert outcome.turn_form == "text"
    assert outcome.turn == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": outcome.output}]
    started = rec.of(EventType.AGENT_STARTED)
    assert "history" in started[0] and "history" not in started[1]  # only the first agent has the thread


def test_history_text_for_frameworks_without_message_lists() -> None:
    from flowrelay_executor.engine.history import Conversation

    conversation = Conversation.start(JobHistory(messages=EARLIER, turns=1), "and now?", framework="langchain",
                                      instructions="x")
    assert isinstance(conversation.prompt, str)
    assert conversation.prompt.startswith(TRANSCRIPT_HEADER)
    assert "User: my name is Ada" in conversation.prompt and "[tool result: 3]" in conversation.prompt
    assert conversation.prompt.endswith("and now?")
    notice = conversation.notice()
    assert notice["as"] == "text" and "langchain" in notice["note"]


# -- choosing and shortening turns (pure) ----------------------------------------------------


def _record(sizes: list[int]) -> ThreadRecord:
    runs = [ThreadRun(run_id=f"r{i}", turn=TurnRef(seq=10 + i, bytes=size)) for i, size in enumerate(sizes)]
    return ThreadRecord(thread_id="t", runs=runs)


def test_history_keeps_the_newest_whole_turns_within_the_budget() -> None:
    refs, dropped = pick_history(_record([400, 300, 200, 100]), budget=550)
    assert [r.seq for r in refs] == [12, 13] and dropped == 2  # 100 + 200 fit, + 300 would not
    refs, dropped = pick_history(_record([400, 300, 200, 100]), budget=550, exclude_run="r3")
    assert [r.seq for r in refs] == [11, 12] and dropped == 1
    refs, dropped = pick_history(_record([900, 10]), budget=100)
    assert [r.seq for r in refs] == [11] and dropped == 1  # never an older turn past a gap


def test_a_turn_larger_than_the_budget_is_stored_shortened() -> None:
    turn = ThreadTurn(thread_id="t", run_id="r", messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "x", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "y" * 10_000},
        {"role": "assistant", "content": "z" * 10_000},
    ])
    small = compact_turn(turn, 4096)
    assert small.compacted and turn_bytes(small.messages) <= 4096
    assert [m["role"] for m in small.messages] == ["user", "assistant"]
    assert small.messages[1]["content"].startswith("zzz")
    assert compact_turn(turn, 100_000) is turn


# -- ask_human: pause and resume ------------------------------------------------------------

ASK = '#call=ask_human {"question": "Which colour?", "choices": ["red", "blue"]}'


async def test_ask_human_pauses_with_the_conversation_and_resumes_with_the_answer(engine: Engine, model_url: str) -> None:
    from flowrelay_executor.jobs import ResumePoint

    agents = [{"name": "painter", "instructions": "Paint.", "tools": ["ask_human", "add"]}]
    first = job(model_url, ASK, agents=agents, history=JobHistory())
    paused, rec1 = await run(engine, first)
    assert paused.status == "waiting" and paused.output is None and paused.error is None
    state = paused.pause
    assert state is not None and state.question == "Which colour?" and state.choices == ["red", "blue"]
    assert state.agent == "painter" and state.step_index == 0 and state.turn_prefix == 1
    assert state.messages[-1]["tool_calls"][0]["id"] == state.tool_call_id
    assert [d["tool"] for d in rec1.of(EventType.TOOL_STARTED)] == ["ask_human"]
    assert rec1.of(EventType.TOOL_FINISHED) == [] and rec1.of(EventType.AGENT_FINISHED) == []
    assert paused.usage.input_tokens > 0  # what the first segment spent is reported

    resumed_job = first.model_copy(update={"resume": ResumePoint(wait_id="w1", state=state, answer="blue")})
    done, rec2 = await run(engine, resumed_job)
    assert done.status == "succeeded", done.error
    assert done.output == "blue"  # the scripted model answers with the tool's result: the answer
    [finished] = rec2.of(EventType.TOOL_FINISHED)
    assert finished["tool"] == "ask_human" and finished["result"] == "blue"
    assert rec2.of(EventType.AGENT_STARTED)[0]["resumed"] is True
    spent = [d for d in rec1.of(EventType.LLM_FINISHED) + rec2.of(EventType.LLM_FINISHED)]
    assert done.usage.input_tokens == sum(d["input_tokens"] for d in spent)  # every segment counted once
    assert done.usage.output_tokens == sum(d["output_tokens"] for d in spent)
    assert [d["turn"] for d in rec2.of(EventType.LLM_STARTED)] == [2]  # turns continue across the pause
    # the thread turn: the user's message, the question, the answer, the final answer
    assert done.turn is not None and [m["role"] for m in done.turn] == ["user", "assistant", "tool", "assistant"]
    assert done.turn[2] == {"role": "tool", "tool_call_id": state.tool_call_id, "name": "ask_human", "content": "blue"}


async def test_a_sequential_step_asks_and_the_chain_continues_after_it(engine: Engine, model_url: str) -> None:
    from flowrelay_executor.jobs import ResumePoint

    agents = [{"name": "one", "instructions": "a", "tools": ["ask_human"]}, {"name": "two", "instructions": "b"}]
    first = job(model_url, ASK, agents=agents, pattern="sequential")
    paused, _ = await run(engine, first)
    assert paused.status == "waiting" and paused.pause is not None and paused.pause.step_index == 0
    done, rec = await run(engine, first.model_copy(update={
        "resume": ResumePoint(wait_id="w", state=paused.pause, answer="red")}))
    assert done.status == "succeeded", done.error
    assert [d["agent"] for d in rec.of(EventType.AGENT_STARTED)] == ["one", "two"]
    assert [d["step"] for d in rec.of(EventType.AGENT_STARTED)] == [2, 3]  # numbering continues
    assert done.output == "echo: red"  # the second agent got the first one's answer


async def test_a_sub_agent_cannot_ask(engine: Engine, model_url: str) -> None:
    agents = [{"name": "boss", "instructions": "Delegate."}, {"name": "helper", "instructions": "h", "tools": ["ask_human"]}]
    # the coordinator forwards the user's text (with the directive) to its sub-agent
    text = '#call=helper {"request": "#call=ask_human {\\"question\\": \\"ok?\\"}"}'
    outcome, _ = await run(engine, job(model_url, text, agents=agents, pattern="collaborative"))
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error.code == "invalid_workflow" and "ask_human" in outcome.error.message
