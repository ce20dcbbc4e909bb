"""Buyer personas the opportunity agent recognises in a contact's job title, and how each fits as a buyer."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Persona:
    """A known buyer persona and how it fits as a buyer."""

    key: str
    aliases: tuple[str, ...]
    score: float
    role: str
    decision_authority: str
    reasoning: str
    default_objectives: tuple[str, ...]


# Most specific first: matching takes the first persona one of whose aliases is a phrase of the given title.
PERSONAS: tuple[Persona, ...] = (
    Persona(
        "cfo",
        ("cfo", "chief financial officer", "finance director", "vp finance", "head finance"),
        0.9,
        "Chief Financial Officer",
        "economic_buyer",
        "Owns the budget and signs off ROI-based business cases.",
        ("cost", "revenue", "risk"),
    ),
    Persona(
        "ceo",
        ("ceo", "chief executive officer", "founder", "president", "managing director"),
        0.85,
        "Chief Executive Officer",
        "economic_buyer",
        "Final decision maker; sponsors strategic value programmes.",
        ("revenue", "cost", "retention"),
    ),
    Persona(
        "coo",
        ("coo", "chief operating officer", "vp operations", "head operations", "operations director"),
        0.8,
        "Chief Operating Officer",
        "economic_buyer",
        "Owns operational budgets and the processes the solution changes.",
        ("efficiency", "cost", "speed"),
    ),
    Persona(
        "cto",
        (
            "cto",
            "chief technology officer",
            "cio",
            "chief information officer",
            "vp engineering",
            "head engineering",
            "vp technology",
        ),
        0.75,
        "Chief Technology Officer",
        "technical_buyer",
        "Approves the technical fit and often a share of the budget.",
        ("speed", "efficiency", "risk"),
    ),
    Persona(
        "vp_sales",
        ("vp sales", "head sales", "sales director", "cro", "chief revenue officer"),
        0.7,
        "VP Sales",
        "budget_holder",
        "Holds a departmental budget and owns revenue KPIs.",
        ("revenue", "retention", "visibility"),
    ),
    Persona(
        "director",
        ("director", "vp", "head"),
        0.55,
        "Director",
        "influencer",
        "Shapes the decision but rarely signs it alone.",
        ("efficiency", "cost", "visibility"),
    ),
    Persona(
        "manager",
        ("manager", "lead", "analyst"),
        0.4,
        "Manager",
        "champion",
        "Day-to-day user who can champion the solution internally.",
        ("efficiency", "speed", "visibility"),
    ),
)
# Phrases in discovery notes that suggest the contact takes part in the buying decision (a small fit bonus).
AUTHORITY_CUES: tuple[str, ...] = ("budget", "approve", "sign off", "sign-off", "decision")


def _normalise_title(title: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", title.lower()).split()
    return " ".join(w for w in words if w not in ("of", "the", "and"))


def match_persona(title: str | None) -> Persona | None:
    """Return the known persona a job title names, or ``None``.

    The title is lower-cased, stripped of punctuation and of "of/the/and"; a persona matches when one of its
    aliases appears in it as whole words ("VP of Sales" -> VP Sales). :data:`PERSONAS` is ordered most
    specific first.
    """
    if not title:
        return None
    padded = f" {_normalise_title(title)} "
    for persona in PERSONAS:
        if any(f" {alias} " in padded for alias in persona.aliases):
            return persona
    return None
