"""Multi-agent content: outline -> draft -> fact_check -> edit -> publish.

``fact_check`` sends the article back to ``draft`` (with ``goto``) until every claim matches
the sources or the brief's round limit is reached: a loop decided at run time, not drawn in
advance. The "LLM" agents are deterministic text functions (no network, no model), so the
example runs anywhere and always takes the same path for the same brief.

The drafting and editing agents run on their own ``llm`` queue, so they can be given their
own workers (``conveyor worker examples/content.py:app --queues llm``) and scaled apart from
the cheap steps. ``ctx.state`` keeps the fact checker's report of every round.

Try it::

    conveyor dev examples/content.py:app
    conveyor start content --input '{"topic": "Redis Streams"}' --wait
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field

from conveyor import App, StepContext, Workflow, goto

HEADINGS = (
    "What {topic} is",
    "How {topic} works",
    "{topic} in production",
    "Pitfalls of {topic}",
)
CLAIMS = (
    "Teams adopting {topic} report a {n}% drop in p99 latency.",
    "A single {topic} node handles about {n} thousand operations per second.",
    "{n}% of the teams we surveyed run {topic} on Kubernetes.",
    "Misconfiguration causes {n}% of {topic} incidents.",
)


class Brief(BaseModel):
    """What the editor asks for."""

    topic: str = Field(min_length=3, max_length=80)
    audience: str = Field("engineers", min_length=1, max_length=40)
    max_rounds: int = Field(3, ge=1, le=10, description="drafts allowed before editing anyway")


def _hash(*parts: object) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def source_facts(topic: str) -> list[int]:
    """The trusted sources the fact checker reads: the true number behind each section."""
    return [5 + _hash(topic, i) % 90 for i in range(len(HEADINGS))]


# -- the fake agents ---------------------------------------------------------------------------


def fake_llm_recall(topic: str, section: int, round: int, corrections: dict[str, int]) -> int:
    """The number the drafting "LLM" writes for a section. It uses the fact checker's
    corrections when it has them; otherwise it misremembers now and then, more often in a
    first draft written from memory alone."""
    if str(section) in corrections:
        return corrections[str(section)]
    truth = source_facts(topic)[section]
    h = _hash(topic, section, round)
    wrong = h % 2 == 0 if round == 0 else h % 4 == 0
    return truth + 1 + h % 9 if wrong else truth


def fake_llm_write(topic: str, audience: str, section: int, number: int) -> str:
    opener = ("In short:", "Put simply:", "For {audience}:", "Worth knowing:")[_hash(topic) % 4]
    claim = CLAIMS[section].format(topic=topic, n=number)
    return f"{opener.format(audience=audience)}  {claim} more detail follows  "


def copy_edit(text: str) -> str:
    """Collapse whitespace, capitalise sentences, end with a full stop."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"(^|[.!?:] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return text if text.endswith((".", "!", "?")) else text + "."


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- the workflow ------------------------------------------------------------------------------

content = Workflow("content")


@content.step(start=True)
async def outline(ctx: StepContext, brief: Brief) -> Any:
    headings = [h.format(topic=brief.topic) for h in HEADINGS]
    ctx.state["fact_checks"] = []
    return goto(draft, {**brief.model_dump(), "headings": headings, "round": 0, "corrections": {}})


@content.step(queue="llm", retries=3, backoff=0.1, timeout=60)
async def draft(ctx: StepContext, job: dict[str, Any]) -> Any:
    sections = []
    for i, heading in enumerate(job["headings"]):
        number = fake_llm_recall(job["topic"], i, job["round"], job["corrections"])
        text = fake_llm_write(job["topic"], job["audience"], i, number)
        sections.append({"heading": heading, "text": text, "claim": number})
    return goto(fact_check, {**job, "sections": sections})


@content.step
def fact_check(ctx: StepContext, job: dict[str, Any]) -> Any:
    sources = source_facts(job["topic"])
    problems = {
        str(i): sources[i]
        for i, section in enumerate(job["sections"])
        if section["claim"] != sources[i]
    }
    ctx.state["fact_checks"].append({"round": job["round"], "problems": len(problems)})
    if problems and job["round"] + 1 < job["max_rounds"]:
        # Back to the writer with the corrections: the loop is decided here, at run time.
        corrections = {**job["corrections"], **problems}
        return goto(draft, {**job, "round": job["round"] + 1, "corrections": corrections})
    return goto(edit, {**job, "unverified": sorted(problems, key=int)})


@content.step(queue="llm", then="publish", timeout=60)
async def edit(ctx: StepContext, job: dict[str, Any]) -> dict[str, Any]:
    title = f"{job['topic']}: a field guide for {job['audience']}"
    parts = [f"# {title}"]
    for i, section in enumerate(job["sections"]):
        text = copy_edit(section["text"])
        if str(i) in job["unverified"]:
            text += " [unverified]"
        parts.append(f"## {section['heading']}\n\n{text}")
    body = "\n\n".join(parts)
    return {
        "title": title,
        "body": body,
        "rounds": job["round"] + 1,
        "unverified": len(job["unverified"]),
    }


@content.step
async def publish(ctx: StepContext, article: dict[str, Any]) -> dict[str, Any]:
    # A real publisher would use ctx.idempotency_key so a retried publish posts once.
    return {
        "title": article["title"],
        "url": f"https://blog.example.com/posts/{slugify(article['title'])}",
        "words": len(article["body"].split()),
        "rounds": article["rounds"],
        "verified": article["unverified"] == 0,
        "fact_checks": ctx.state["fact_checks"],
        "body": article["body"],
    }


app = App(workflows=[content])
