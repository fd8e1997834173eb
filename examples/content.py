"""Multi-agent content: outline -> draft -> fact_check -> review (x N) -> edit -> publish.

The shape is the one agentic pipelines keep arriving at, decided at run time by the steps:

- ``fact_check`` sends the article back to ``draft`` (with ``goto``) until every claim matches
  the sources or the brief's round limit is reached: a loop, not a graph drawn in advance.
- It then hands each section to its own reviewer agent with ``fan_out(review, sections,
  then=edit)``: the reviews run in parallel on any worker (at most ``MAX_REVIEWERS`` of one
  article at once, so a long article does not take every ``llm`` worker), and ``edit`` runs
  once with the notes in section order. ``on_error="collect"`` keeps one failed reviewer from
  sinking the article: its slot holds an error (``error_of(note)``) and ``edit`` leaves that
  section out, saying so, instead of publishing it unreviewed.
- ``edit`` applies the notes and parks the workflow with ``wait("approval", ...)`` (status
  ``waiting``; no worker is held) until a human answers with a signal. ``publish`` reads the
  answer: approved -> published; rejected -> a result that says so, with the reason. An
  answer it cannot read (``{"approved": "maybe"}``) is ignored and the workflow waits again.
  Nobody answering within the brief's ``approval_timeout`` is decided by
  ``auto_publish_on_timeout``: off by default (the article expires unpublished, since text
  nobody approved should not go out by silence), on for briefs where publishing on schedule
  matters more.

The "LLM" agents are deterministic text functions (no network, no model), so the example runs
anywhere and always takes the same path for the same brief.

The model-calling steps (``draft``, ``review``) run on their own ``llm`` queue, so they can
get their own workers (``conveyor worker examples/content.py:app --queues llm``) and scale
apart from the cheap steps. They also share one rate limit, ``llm`` at ``LLM_RATE``: a
model API's quota is per account, not per process, so the budget is kept in Redis and every
worker of every pod draws from it (a task held back waits in the delayed set, it is not
failed). ``review`` is pure (the same section text always gets the same notes), so its result
is cached for ``REVIEW_CACHE_TTL`` in Redis, by (workflow, step, input): the cache is shared
across workflows and workers, so re-running a brief, or two articles sharing a section, pays
for the review once, and a cache hit spends none of the rate limit. ``draft`` is not cached:
a real model's draft is not a pure function of its prompt, and a retry wants a new one.

``ctx.state`` keeps the fact checker's report of every round, the draft under review (the
join receives only the notes) and, while it waits, the edited article for the approver
(``conveyor status ID --json`` shows it).

Try it::

    conveyor dev examples/content.py:app
    conveyor start content --input '{"topic": "Redis Streams"}'
    conveyor status ID                      # "waiting" for "approval"
    conveyor signal ID approval --payload '{"approved": true}'
    conveyor status ID                      # completed: the published article

Or reject it: ``--payload '{"approved": false, "reason": "too thin"}'``. A brief of
``"sections": 5`` shows a failed reviewer: the fifth heading has no sources, its section is
written empty, and its reviewer refuses it (``EmptySectionError``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from conveyor import (
    App,
    Limit,
    NonRetryableError,
    StepContext,
    Workflow,
    error_of,
    fan_out,
    goto,
    is_timeout,
    wait,
)

HEADINGS = (
    "What {topic} is",
    "How {topic} works",
    "{topic} in production",
    "Pitfalls of {topic}",
    "{topic} versus the alternatives",  # no sources for these two: written empty
    "The future of {topic}",
)
CLAIMS = (  # one sourced claim per section, for the first len(CLAIMS) headings
    "Teams adopting {topic} report a {n}% drop in p99 latency.",
    "A single {topic} node handles about {n} thousand operations per second.",
    "{n}% of the teams we surveyed run {topic} on Kubernetes.",
    "Misconfiguration causes {n}% of {topic} incidents.",
)
FILLER_OPENERS = ("In short:", "Put simply:", "Worth knowing:")
PLACEHOLDERS = ("more detail follows",)

#: One unit is one model call; every worker draws from this budget (kept in Redis).
LLM_RATE = "600/min"
#: Reviews of the same text are the same: memoise them for a day, across workflows.
REVIEW_CACHE_TTL = 24 * 3600.0
#: Reviewer agents of one article running at once.
MAX_REVIEWERS = 3


class Brief(BaseModel):
    """What the editor asks for."""

    topic: str = Field(min_length=3, max_length=80)
    audience: str = Field("engineers", min_length=1, max_length=40)
    sections: int = Field(len(CLAIMS), ge=1, le=len(HEADINGS), description="sections to write")
    max_rounds: int = Field(3, ge=1, le=10, description="drafts allowed before editing anyway")
    approval_timeout: float = Field(
        3600.0, gt=0, le=7 * 86400, description="seconds to wait for the approval signal"
    )
    auto_publish_on_timeout: bool = Field(
        False, description="publish when nobody answers in time (else the article expires)"
    )


class Approval(BaseModel):
    """The payload of the ``approval`` signal."""

    approved: bool
    by: str = Field("editor", min_length=1, max_length=80)
    reason: str = Field("", max_length=500)


class EmptySectionError(NonRetryableError):
    """The reviewer got a section with no text. Like a real model API refusing an empty
    prompt, it fails at once: a retry would send the same nothing."""


def _hash(*parts: object) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def source_facts(topic: str) -> list[int]:
    """The trusted sources the fact checker reads: the true number behind each sourced
    section (the first ``len(CLAIMS)``)."""
    return [5 + _hash(topic, i) % 90 for i in range(len(CLAIMS))]


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


def fake_llm_review(heading: str, text: str) -> list[dict[str, str]]:
    """The reviewer "LLM": notes on tone and leftovers, each with the phrase to cut. A pure
    function of the section, which is what makes caching the ``review`` step correct."""
    if not text.strip():
        raise EmptySectionError(f"section {heading!r} is empty: nothing to review")
    notes = [
        {"issue": "tone: filler opener", "cut": opener}
        for opener in FILLER_OPENERS
        if text.lstrip().startswith(opener)
    ]
    notes += [
        {"issue": "placeholder left in the text", "cut": phrase}
        for phrase in PLACEHOLDERS
        if phrase in text
    ]
    return notes


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
    headings = [h.format(topic=brief.topic) for h in HEADINGS[: brief.sections]]
    ctx.state["fact_checks"] = []
    return goto(draft, {**brief.model_dump(), "headings": headings, "round": 0, "corrections": {}})


@content.step(
    queue="llm",
    retries=3,
    backoff=0.1,
    timeout=60,
    # one model call per section, charged up front from the shared budget
    rate_limit=Limit("llm", LLM_RATE, cost=lambda job: len(job["headings"])),
)
async def draft(ctx: StepContext, job: dict[str, Any]) -> Any:
    sections = []
    for i, heading in enumerate(job["headings"]):
        if i < len(CLAIMS):
            number = fake_llm_recall(job["topic"], i, job["round"], job["corrections"])
            text = fake_llm_write(job["topic"], job["audience"], i, number)
            sections.append({"heading": heading, "text": text, "claim": number})
        else:  # nothing in the sources: our honest "LLM" writes nothing (a real one might not)
            sections.append({"heading": heading, "text": "", "claim": None})
    return goto(fact_check, {**job, "sections": sections})


@content.step
def fact_check(ctx: StepContext, job: dict[str, Any]) -> Any:
    sources = source_facts(job["topic"])
    problems = {
        str(i): sources[i]
        for i, section in enumerate(job["sections"])
        if section["claim"] is not None and section["claim"] != sources[i]
    }
    ctx.state["fact_checks"].append({"round": job["round"], "problems": len(problems)})
    if problems and job["round"] + 1 < job["max_rounds"]:
        # Back to the writer with the corrections: the loop is decided here, at run time.
        corrections = {**job["corrections"], **problems}
        return goto(draft, {**job, "round": job["round"] + 1, "corrections": corrections})
    # The join receives only the notes: the draft waits for it in the workflow's state.
    ctx.state["draft"] = {**job, "unverified": sorted(problems, key=int)}
    # Only the section goes to its reviewer, so equal sections share a cached review.
    sections = [{"heading": s["heading"], "text": s["text"]} for s in job["sections"]]
    return fan_out(review, sections, then=edit, max_parallel=MAX_REVIEWERS, on_error="collect")


@content.step(
    queue="llm",
    retries=2,
    backoff=0.1,
    timeout=60,
    cache_ttl=REVIEW_CACHE_TTL,
    rate_limit=Limit("llm", LLM_RATE),  # the same budget as draft: one call per review
)
async def review(ctx: StepContext, section: dict[str, str]) -> dict[str, Any]:
    """A per-section reviewer agent; its plain return value fills its slot in edit's list."""
    notes = fake_llm_review(section["heading"], section["text"])
    return {"heading": section["heading"], "notes": notes}


@content.step(timeout=60)
async def edit(ctx: StepContext, reviews: list[Any]) -> Any:
    job = ctx.state.pop("draft")
    title = f"{job['topic']}: a field guide for {job['audience']}"
    parts = [f"# {title}"]
    applied, dropped = 0, []
    for i, (section, reviewed) in enumerate(zip(job["sections"], reviews, strict=True)):
        error = error_of(reviewed)
        if error is not None:  # this section's reviewer failed for good: leave it out
            reason = f"{error['type']}: {error['message']}"
            dropped.append({"heading": section["heading"], "error": reason})
            continue
        text = section["text"]
        for note in reviewed["notes"]:
            text = text.replace(note["cut"], " ")
            applied += 1
        text = copy_edit(text)
        if str(i) in job["unverified"]:
            text += " [unverified]"
        parts.append(f"## {section['heading']}\n\n{text}")
    ctx.state["article"] = {
        "title": title,
        "body": "\n\n".join(parts),
        "rounds": job["round"] + 1,
        "unverified": len(job["unverified"]),
        "notes_applied": applied,
        "dropped": dropped,
        "approval_timeout": job["approval_timeout"],
        "auto_publish_on_timeout": job["auto_publish_on_timeout"],
    }
    # Park until a human answers; no worker is held meanwhile.
    return wait("approval", then=publish, timeout=job["approval_timeout"])


@content.step
async def publish(ctx: StepContext, answer: Any) -> Any:
    """Receives the approval signal's payload, or the timeout marker when nobody answered."""
    article = ctx.state["article"]
    auto = is_timeout(answer)
    if auto:
        waited = f"no answer within {article['approval_timeout']:g} s"
        if not article["auto_publish_on_timeout"]:
            return {"status": "expired", "title": article["title"], "reason": waited}
        approval = Approval(approved=True, by="auto", reason=waited)
    else:
        try:
            approval = Approval.model_validate(answer)
        except ValidationError as exc:
            # A typo in a signal should not throw the article away: note it, ask again.
            ctx.state.setdefault("ignored_answers", []).append(
                {"payload": answer, "error": str(exc.errors()[0]["msg"])}
            )
            return wait("approval", then=publish, timeout=article["approval_timeout"])
    if not approval.approved:
        return {
            "status": "rejected",
            "title": article["title"],
            "by": approval.by,
            "reason": approval.reason,
        }
    # A real publisher would use ctx.idempotency_key so a retried publish posts once.
    return {
        "status": "published",
        "title": article["title"],
        "url": f"https://blog.example.com/posts/{slugify(article['title'])}",
        "words": len(article["body"].split()),
        "rounds": article["rounds"],
        "verified": article["unverified"] == 0,
        "fact_checks": ctx.state["fact_checks"],
        "notes_applied": article["notes_applied"],
        "dropped": article["dropped"],
        "approved_by": approval.by,
        "auto_approved": auto,
        "body": article["body"],
    }


app = App(workflows=[content])
